"""The detectors' heads: the small heads of the tiny models, and where the paper's keypoint-head
blocks go (after every 2 convs of torchvision's ``KeypointRCNNHeads``)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from nonlocalnet.errors import InvalidValueError

__all__ = ["TINY_SIZE", "keypoint_head_block_positions", "tiny_head_options"]

TINY_SIZE = 128
"""The tiny models' default ``min_size`` and ``max_size`` (images of about 128-160 px)."""

_TINY_CHANNELS = 32  # the tiny FPN's width, also of its mask and keypoint heads
_TINY_LEVELS = ["0", "1"]  # the tiny FPN's maps the RoI heads read ("pool" is for the RPN only)
_TINY_REPRESENTATION = 128  # the box head's MLP width


def tiny_head_options(
    *, has_masks: bool, keypoints: bool, num_classes: int, num_keypoints: int | None
) -> dict[str, Any]:
    """Constructor keywords of the tiny models: anchors of 8-64 px over the 3 FPN maps (strides
    4, 8, 16; two sizes each), a 128-wide box head, a 2-conv 32-wide mask head, a 4-conv 32-wide
    keypoint head, and less sampling (64 anchors and 64 RoIs per image, 300/100 proposals
    before/after NMS). The predictors are built here, so ``num_classes``/``num_keypoints`` go to
    them."""
    c, r = _TINY_CHANNELS, _TINY_REPRESENTATION
    anchors = AnchorGenerator(((8, 16), (24, 32), (48, 64)), ((0.5, 1.0, 2.0),) * 3)
    options: dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(c, anchors.num_anchors_per_location()[0]),
        "rpn_batch_size_per_image": 64,
        "rpn_pre_nms_top_n_train": 300,
        "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        "box_roi_pool": MultiScaleRoIAlign(_TINY_LEVELS, 7, sampling_ratio=2),
        "box_head": TwoMLPHead(c * 7 * 7, r),
        "box_predictor": FastRCNNPredictor(r, num_classes),
        "box_batch_size_per_image": 64,
    }
    if has_masks:
        options |= {
            "mask_roi_pool": MultiScaleRoIAlign(_TINY_LEVELS, 14, sampling_ratio=2),
            "mask_head": MaskRCNNHeads(c, [c, c], 1),
            "mask_predictor": MaskRCNNPredictor(c, c, num_classes),
        }
    if keypoints:
        options |= {
            "keypoint_roi_pool": MultiScaleRoIAlign(_TINY_LEVELS, 14, sampling_ratio=2),
            "keypoint_head": KeypointRCNNHeads(c, [c] * 4),
            "keypoint_predictor": KeypointRCNNPredictor(c, 17 if num_keypoints is None else num_keypoints),
        }
    return options


def keypoint_head_block_positions(head: nn.Module) -> list[tuple[int, int]]:
    """Where the paper's head blocks go in a ``KeypointRCNNHeads`` (``(conv, relu) x n``): after
    the ReLU closing every 2nd conv (indices 3, 7, 11, 15 of the 8-conv head). Returns
    ``(index, channels)`` pairs, the channels being those of the conv before that ReLU."""
    children = list(head.children())
    convs = [(i, m) for i, m in enumerate(children) if isinstance(m, nn.Conv2d)]
    if not convs or any(
        not isinstance(children[i + 1] if i + 1 < len(children) else None, nn.ReLU) for i, _ in convs
    ):
        raise InvalidValueError(
            f"the keypoint head {type(head).__name__} is not a sequence of (Conv2d, ReLU) pairs; "
            "non-local head blocks need torchvision's KeypointRCNNHeads layout"
        )
    return [(convs[k][0] + 1, convs[k][1].out_channels) for k in range(1, len(convs), 2)]
