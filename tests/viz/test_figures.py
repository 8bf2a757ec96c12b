import numpy as np
import pytest
import torch

from nonlocalnet.engine import read_jsonl
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.viz import (
    attention_map,
    key_argmax_pixel,
    nonlocal_inputs,
    plot_attention,
    plot_confusion,
    plot_training_curves,
    query_to_grid,
    write_confusion_csv,
)


def test_attention_of_a_query_finds_the_matching_key_and_is_drawn(tmp_path):
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
    frames = np.zeros((4, 12, 12, 3), np.uint8)
    out = plot_attention(
        frames, weights, (3, 11.5, 11.5), tmp_path / "a.png", boxes=[(0, 1, 2, 4, 2, "early")]
    )
    assert out.stat().st_size > 1000


def test_nonlocal_inputs_needs_a_block():
    with pytest.raises(ValueError, match="no NonLocalBlock"):
        nonlocal_inputs(torch.nn.Identity(), torch.zeros(1, 3, 1, 2, 2))


def test_curves_confusion_and_a_torn_log(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text(
        '{"kind": "train", "step": 1, "loss": 2.0, "top1": 0.1, "lr": 0.1}\n'
        '{"kind": "val", "step": 1, "clip_top1": 0.5, "video_top1": 0.6}\n'
        '{"kind": "train", "st'
    )
    records = read_jsonl(log)
    assert len(records) == 2
    assert plot_training_curves(records, tmp_path / "c.png").stat().st_size > 1000
    confusion = np.array([[3, 1], [0, 4]])
    csv = write_confusion_csv(confusion, ["a", "b"], tmp_path / "c.csv").read_text().splitlines()
    assert csv == ["true \\ predicted,a,b", "a,3,1", "b,0,4"]
    assert plot_confusion(confusion, ["a", "b"], tmp_path / "c2.png").stat().st_size > 1000
    log.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON record"):
        read_jsonl(log)
