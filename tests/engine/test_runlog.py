"""Reading the JSONL metrics log (``nonlocalnet.engine.runlog``)."""

import pytest

from nonlocalnet.engine import read_jsonl


def test_a_torn_last_line_is_skipped_and_a_bad_line_inside_is_an_error(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text(
        '{"kind": "train", "step": 1, "loss": 2.0, "top1": 0.1, "lr": 0.1}\n'
        '{"kind": "val", "step": 1, "clip_top1": 0.5, "video_top1": 0.6}\n'
        '{"kind": "train", "st'
    )
    assert read_jsonl(log) == [
        {"kind": "train", "step": 1, "loss": 2.0, "top1": 0.1, "lr": 0.1},
        {"kind": "val", "step": 1, "clip_top1": 0.5, "video_top1": 0.6},
    ]
    log.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON record"):
        read_jsonl(log)
