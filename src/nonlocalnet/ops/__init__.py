"""Pure tensor functions: the non-local operation and nothing else."""

from nonlocalnet.ops.pairwise import (
    ALGORITHMS,
    LOW_PRECISION,
    MODES,
    SOFTMAX_MODES,
    attention_weights,
    check_algorithm,
    check_mode,
    concatenation,
    dot_product,
    nonlocal_op,
    softmax_attention,
)

__all__ = [
    "ALGORITHMS",
    "LOW_PRECISION",
    "MODES",
    "SOFTMAX_MODES",
    "attention_weights",
    "check_algorithm",
    "check_mode",
    "concatenation",
    "dot_product",
    "nonlocal_op",
    "softmax_attention",
]
