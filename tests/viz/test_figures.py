"""Figures of training runs (``nonlocalnet.viz``): what each draws, read back from the matplotlib
Figure, and the PNG's size in pixels."""

import numpy as np
import pytest
import torch
from matplotlib.patches import ConnectionPatch, Rectangle
from png_header import png_size

from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.viz import (
    attention_map,
    draw_attention,
    draw_confusion,
    draw_training_curves,
    key_argmax_pixel,
    nonlocal_inputs,
    plot_attention,
    plot_confusion,
    plot_training_curves,
    query_to_grid,
    write_confusion_csv,
)


def test_attention_of_a_query_finds_the_matching_key():
    block = NonLocalBlock(4, mode="gaussian", norm="none", sub_sample=False)
    model = torch.nn.Sequential(torch.nn.Identity(), block)
    x = torch.zeros(1, 4, 4, 6, 6)
    x[0, :, 3, 5, 5] = 3.0  # the query's feature
    x[0, :, 0, 1, 2] = 3.0  # the same feature far away, early
    ((_name, (captured_block, captured)),) = nonlocal_inputs(model, x).items()
    assert captured_block is block and torch.equal(captured, x)
    query = query_to_grid((3, 11.5, 11.5), (4, 12, 12), captured.shape[2:])
    assert query == (3, 5, 5)
    weights = attention_map(block, captured, query)
    assert weights.shape == (4, 6, 6) and weights.sum().item() == pytest.approx(1.0)
    # the query itself and its far twin share the top weight; ties break to the first index
    assert key_argmax_pixel(weights, (4, 12, 12)) == (0.5, 3.0, 5.0)


def test_attention_figure_draws_the_weights_the_query_the_boxes_and_the_arrow(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    weights = torch.rand(4, 6, 6)
    weights[0, 1, 2] = 2.0  # the most attended key: frame 0, pixel (y, x) = (3, 5)
    query = (3, 11.5, 11.5)
    fig = draw_attention(frames, weights, query, boxes=[(0, 1, 2, 4, 2, "early")], title="T")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["t=0", "t=1", "t=2", "t=3"]
    assert fig.get_suptitle() == "T"
    up = weights.repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()  # 6x6 cells over 12x12 pixels
    for t, ax in enumerate(axes):
        frame, heat = ax.images
        np.testing.assert_array_equal(frame.get_array(), frames[t])
        np.testing.assert_array_equal(heat.get_array(), up[t])
        assert heat.get_clim() == (0, pytest.approx(2.0))
        boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert [(b.get_xy(), b.get_width(), b.get_height()) for b in boxes] == (
            [((3.5, 1.5), 2, 2)] if t == 0 else []
        )
        assert [text.get_text() for text in ax.texts] == (["early"] if t == 0 else [])
        # the query is marked on its own frame only
        assert [line.get_xydata().tolist() for line in ax.lines] == ([[[11.5, 11.5]]] if t == 3 else [])
    (arrow,) = [a for a in fig.artists if isinstance(a, ConnectionPatch)]
    assert arrow.xy1 == (11.5, 11.5) and arrow.xy2 == (5.0, 3.0)
    out = plot_attention(frames, weights, query, tmp_path / "sub" / "a.png", show=[0, 3])
    assert out == tmp_path / "sub" / "a.png"
    assert png_size(out) == (round(1.9 * 2 * 120), round(2.4 * 120))  # two frames shown


RECORDS = [
    {"kind": "train", "step": 1, "loss": 2.0, "top1": 0.1, "lr": 0.1},
    {"kind": "train", "step": 2, "loss": 1.5, "top1": 0.3, "lr": 0.05},
    {"kind": "val", "step": 2, "clip_top1": 0.5, "video_top1": 0.6},
]


def _lines(ax):
    return {line.get_label(): line.get_xydata().tolist() for line in ax.lines}


def test_training_curves_plot_the_log(tmp_path):
    fig = draw_training_curves(RECORDS, title="run")
    loss, accuracy, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert fig.get_suptitle() == "run"
    assert _lines(loss) == {"train loss": [[1, 2.0], [2, 1.5]]}
    assert _lines(accuracy) == {
        "train clip top-1": [[1, pytest.approx(10.0)], [2, pytest.approx(30.0)]],
        "val clip top-1": [[2, 50.0]],
        "val video top-1": [[2, 60.0]],
    }
    assert accuracy.get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == list(_lines(accuracy))
    assert list(_lines(lr).values()) == [[[1, 0.1], [2, 0.05]]]
    assert (loss.get_xlabel(), lr.get_ylabel()) == ("step", "lr")
    assert png_size(plot_training_curves(RECORDS, tmp_path / "c.png")) == (1210, 374)  # 11 x 3.4 in, 110 dpi


def test_training_curves_of_a_detector_show_ap():
    records = [
        {"kind": "train", "step": 1, "loss": 3.0, "lr": 0.02},
        {"kind": "val", "step": 1, "box_AP": 12.5, "mask_AP": 10.0},
    ]
    _, accuracy, _ = draw_training_curves(records).axes
    assert (accuracy.get_title(), accuracy.get_ylabel()) == ("validation AP", "AP (%)")
    assert _lines(accuracy) == {"val box AP": [[1, 12.5]], "val mask AP": [[1, 10.0]]}


def test_confusion_matrix_as_csv_and_as_a_row_normalised_image(tmp_path):
    confusion = np.array([[3, 1], [0, 4]])
    csv = write_confusion_csv(confusion, ["a", "b"], tmp_path / "c.csv").read_text().splitlines()
    assert csv == ["true \\ predicted,a,b", "a,3,1", "b,0,4"]
    fig = draw_confusion(confusion, ["a", "b"])
    ax, colorbar = fig.axes
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "predicted",
        "true",
        "confusion (video level)",
    )
    assert colorbar.get_ylabel() == "fraction of the true class"
    many = draw_confusion(np.eye(41, dtype=int), [f"class {i}" for i in range(41)], title="41")
    assert many.axes[0].get_title() == "41"  # over 40 classes: matplotlib's numeric ticks, no names
    assert not any("class" in t.get_text() for t in many.axes[0].get_xticklabels())
    assert png_size(plot_confusion(confusion, ["a", "b"], tmp_path / "c.png")) == (
        495,
        495,
    )  # 4.5 in, 110 dpi


def test_nonlocal_inputs_needs_a_block():
    with pytest.raises(ValueError, match="no NonLocalBlock"):
        nonlocal_inputs(torch.nn.Identity(), torch.zeros(1, 3, 1, 2, 2))
