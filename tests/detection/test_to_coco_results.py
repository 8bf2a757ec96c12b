"""``to_coco_results`` leaves the caller's outputs as they were: its xyxy -> xywh conversion once
rewrote float64 CPU boxes in place (``.double()`` of a float64 tensor is that tensor)."""

from __future__ import annotations

import pytest
import torch

from nonlocalnet.detection.cocoeval import to_coco_results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_callers_outputs_are_untouched(dtype):
    out = {
        "boxes": torch.tensor([[2.0, 3.0, 10.0, 15.0], [4.0, 4.0, 6.0, 9.0]], dtype=dtype),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.4], dtype=dtype),
        "masks": torch.rand(2, 1, 16, 12, generator=torch.Generator().manual_seed(0), dtype=dtype),
        "keypoints": torch.tensor([[[3.0, 4.0, 1.0]], [[5.0, 6.0, 1.0]]], dtype=dtype),
    }
    before = {k: v.clone() for k, v in out.items()}
    results = to_coco_results([out], [7], {1: 3, 2: 5})
    for key, value in out.items():
        assert value.dtype == dtype or key == "labels", key
        assert torch.equal(value, before[key]), f"{key} was modified"
    assert [r["bbox"] for r in results] == [[2.0, 3.0, 8.0, 12.0], [4.0, 4.0, 2.0, 5.0]]
    assert [r["category_id"] for r in results] == [3, 5]
    # called twice on the same outputs: the same results (the boxes were not converted twice)
    assert to_coco_results([out], [7], {1: 3, 2: 5}) == results
