"""Detections and detection attention drawn on an image."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from png_header import png_size

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.viz.detections import draw_detections, plot_detection_attention, save_detections

NAMES = ["__background__", "match", "mismatch"]


def prediction(n=3, size=16, k=4):
    boxes = torch.tensor([[1.0, 1.0, 6.0, 6.0], [8.0, 2.0, 15.0, 9.0], [3.0, 9.0, 7.0, 15.0]])[:n]
    masks = torch.zeros(n, 1, size, size)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, 0, y0:y1, x0:x1] = 0.9
    keypoints = torch.zeros(n, k, 3)
    keypoints[..., 0], keypoints[..., 1], keypoints[..., 2] = boxes[:, None, 0], boxes[:, None, 1], 1.0
    return {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 1])[:n],
        "scores": torch.tensor([0.9, 0.6, 0.2])[:n],
        "masks": masks,
        "keypoints": keypoints,
    }


def boxes_drawn(fig):
    (ax,) = fig.axes
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_boxes_masks_keypoints_are_drawn_above_the_threshold():
    image = torch.rand(3, 16, 16)
    fig = draw_detections(
        image,
        prediction(),
        class_names=NAMES,
        keypoint_names=["left_top", "right_top", "left_bottom", "right_bottom"],
        skeleton=[(0, 1), (1, 3), (3, 2), (2, 0)],
    )
    assert isinstance(fig, Figure)
    assert len(boxes_drawn(fig)) == 2  # the 0.2 detection is below 0.5
    (ax,) = fig.axes
    assert sorted(t.get_text() for t in ax.texts) == ["match 0.90", "mismatch 0.60"]
    assert len([im for im in ax.get_children() if isinstance(im, AxesImage)]) == 2  # image + masks
    edge = {tuple(p.get_edgecolor()[:3]) for p in boxes_drawn(fig)}
    assert len(edge) == 2  # one colour per class
    assert len(boxes_drawn(draw_detections(image, prediction(), class_names=NAMES, score_threshold=0.1))) == 3
    assert len(boxes_drawn(draw_detections(image, prediction(), class_names=NAMES, score_threshold=1.0))) == 0


def test_images_and_masks_of_every_accepted_form():
    pred = prediction(n=2)
    for image in (
        torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8),
        np.zeros((16, 16, 3), np.uint8),
        np.full((16, 16, 3), 0.5, np.float32),
    ):
        assert len(boxes_drawn(draw_detections(image, pred, class_names=NAMES))) == 2
    for masks in (pred["masks"][:, 0], (pred["masks"] > 0.5).to(torch.uint8), (pred["masks"] * 255).byte()):
        draw_detections(np.zeros((16, 16, 3)), {**pred, "masks": masks}, class_names=NAMES)
    # a target: no scores, every box drawn with its name only
    target = {"boxes": pred["boxes"], "labels": pred["labels"]}
    fig = draw_detections(torch.rand(3, 16, 16), target, class_names=NAMES, score_threshold=0.9)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["match", "mismatch"]
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert boxes_drawn(draw_detections(torch.rand(3, 8, 8), empty, class_names=NAMES)) == []


def test_save_detections_writes_a_png(tmp_path):
    out = save_detections(tmp_path / "sub" / "d.png", torch.rand(3, 16, 16), prediction(), class_names=NAMES)
    assert out == tmp_path / "sub" / "d.png"
    assert png_size(out) == (624, 660)  # (5 + 0.2) x (5 + 0.5) in for a square image, 120 dpi
    assert [p.name for p in out.parent.iterdir()] == ["d.png"]  # no temporary left


@pytest.mark.parametrize(
    ("image", "changes", "message"),
    [
        (torch.rand(16, 16, 3), {}, r"shape \(3, H, W\)"),
        (np.zeros((3, 16, 16)), {}, r"shape \(H, W, 3\)"),
        (np.zeros((16, 16, 3), np.int32), {}, "uint8 or float"),
        (torch.rand(3, 16, 16), {"boxes": torch.zeros(3, 5)}, r"boxes must have shape \(n, 4\)"),
        (torch.rand(3, 16, 16), {"labels": torch.tensor([1, 2])}, r"labels must have shape \(n,\) = \(3,\)"),
        (torch.rand(3, 16, 16), {"scores": torch.zeros(3, 1)}, r"scores must have shape \(n,\)"),
        (torch.rand(3, 16, 16), {"labels": torch.tensor([1, 2, 3])}, "labels must index class_names"),
        (torch.rand(3, 16, 16), {"masks": torch.zeros(3, 1, 8, 8)}, r"masks must have shape \(n, 1, H, W\)"),
        (
            torch.rand(3, 16, 16),
            {"keypoints": torch.zeros(3, 4, 2)},
            r"keypoints must have shape \(n, K, 3\)",
        ),
    ],
)
def test_bad_inputs_name_the_expected_shape(image, changes, message):
    with pytest.raises(InvalidValueError, match=message):
        draw_detections(image, {**prediction(), **changes}, class_names=NAMES)


def test_bad_options():
    image = torch.rand(3, 16, 16)
    with pytest.raises(InvalidValueError, match="no 'boxes'"):
        draw_detections(image, {"labels": torch.tensor([1])}, class_names=NAMES)
    with pytest.raises(InvalidTypeError):
        draw_detections(image, [prediction()], class_names=NAMES)
    with pytest.raises(InvalidValueError, match="score_threshold"):
        draw_detections(image, prediction(), class_names=NAMES, score_threshold=2)
    with pytest.raises(InvalidValueError, match="skeleton must be 0-based pairs"):
        draw_detections(image, prediction(), class_names=NAMES, skeleton=[(1, 4)])
    with pytest.raises(InvalidValueError, match="keypoint_names has 2 names for 4 keypoints"):
        draw_detections(image, prediction(), class_names=NAMES, keypoint_names=["a", "b"])


def test_detection_attention_figure():
    attention = torch.zeros(4, 4)
    attention[0, 3] = 1.0
    fig = plot_detection_attention(
        torch.rand(3, 32, 32), attention, (5.0, 27.0), box=(1, 23, 9, 31), key_xy=(28.0, 4.0), title="t"
    )
    image_ax, heat_ax = fig.axes[:2]
    assert len([im for im in heat_ax.get_children() if isinstance(im, AxesImage)]) == 2
    heat = heat_ax.get_images()[1]
    assert heat.get_extent() == [0, 32, 32, 0]  # the grid covers the image
    arrow = heat_ax.texts[0]
    assert arrow.xy == (28.0, 4.0)  # to the centre of the most attended cell
    assert all(len(ax.patches) == 1 for ax in (image_ax, heat_ax))
    np.testing.assert_array_equal(heat.get_array(), attention.numpy())
    assert heat.get_clim() == (0, 1.0)
    plot_detection_attention(np.zeros((32, 32, 3), np.uint8), np.ones((2, 2)) / 4, (3.0, 3.0))
    with pytest.raises(InvalidValueError, match=r"attention must have shape \(h, w\)"):
        plot_detection_attention(torch.rand(3, 32, 32), torch.zeros(1, 4, 4), (1.0, 1.0))
    with pytest.raises(InvalidValueError, match="box must be"):
        plot_detection_attention(torch.rand(3, 32, 32), torch.zeros(4, 4), (1.0, 1.0), box=(1, 2))
