"""Task-free metric helpers."""

from __future__ import annotations

from torch import Tensor

__all__ = ["topk_correct"]


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Boolean ``(B,)``: is the label among the ``k`` highest scores of ``(B, num_classes)``."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
