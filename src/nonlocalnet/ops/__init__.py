"""Pure tensor functions: the non-local operation and nothing else."""

from nonlocalnet.ops.pairwise import (
    MODES,
    attention_weights,
    concatenation,
    dot_product,
    nonlocal_op,
    softmax_attention,
)

__all__ = [
    "MODES",
    "attention_weights",
    "concatenation",
    "dot_product",
    "nonlocal_op",
    "softmax_attention",
]
