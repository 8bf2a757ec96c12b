"""Pure tensor functions: the non-local operation and nothing else."""

from nonlocalnet.ops.pairwise import (
    ALGORITHMS,
    MODES,
    SOFTMAX_MODES,
    attention_weights,
    concatenation,
    dot_product,
    nonlocal_op,
    softmax_attention,
)

__all__ = [
    "ALGORITHMS",
    "MODES",
    "SOFTMAX_MODES",
    "attention_weights",
    "concatenation",
    "dot_product",
    "nonlocal_op",
    "softmax_attention",
]
