"""A resume may lengthen a run when asked (``train --extend``, ``train(..., extend=True)``), as
PySlowFast users raise ``SOLVER.MAX_EPOCH``: the steps up to the checkpoint stay as they were
(log, checkpoints), the lr milestones keep their steps (the added steps continue at the last
lr), and an extended run resumes exactly. Without the flag, and for any other change, a resume
is refused as before."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from launch import weights
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine import load_checkpoint, train
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.tasks import config_from_dict

# 8 videos, batch 4: 2 steps per epoch. 4 epochs = 8 steps, the lr drops x0.1 at 0.75 of them
# (step 6). Extended to 8 epochs = 16 steps: a milestone taken as a fraction of the new length
# would sit at step 12 and put the lr of steps 9-12 back up to 0.1.
PEAK, LOW = 0.1, 0.1 * 0.1


def _config(tiny_data, run: Path, epochs: int, **sections) -> dict:
    base = {
        "train": {"epochs": epochs, "precise_bn_batches": 1},
        "optim": {"lr_milestones": [0.75]},
        "eval": {"every_epochs": 2},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return tiny_config(tiny_data, run, **base)


def _lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


def _digests(run: Path) -> dict[str, str]:
    files = (run / "checkpoints").glob("iter_*.pt")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def extended(tmp_path_factory, tiny_data) -> dict:
    """A 4-epoch run, then the same run extended to 8 epochs through the CLI, in its folder."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("extend")
    run = folder / "run"
    train(config_from_dict(_config(tiny_data, run, 4)))
    before = {"lines": _lines(run), "digests": _digests(run)}
    config = write_config(folder / "run.yaml", _config(tiny_data, run, 4))
    handler, logger = _Records(), logging.getLogger("nonlocalnet.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        code = main(["train", "--config", str(config), "--resume", "--extend", "train.epochs=8"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        torch.set_num_threads(torch_threads)
    assert code == 0
    return {"run": run, "config": config, "before": before, "log": handler.messages}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_extending_keeps_every_step_up_to_the_checkpoint_and_the_lr_milestones(extended):
    run, before = extended["run"], extended["before"]
    lines = _lines(run)
    # the log up to the checkpoint (step 8 and its final validation) is the original, byte for byte
    assert lines[: len(before["lines"])] == before["lines"]
    added = [json.loads(line) for line in lines[len(before["lines"]) :]]
    train_records = [r for r in added if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(9, 17))
    # the step right after the checkpoint has the checkpoint's last lr (the milestone stayed at
    # step 6), and so do all the added steps
    original = [json.loads(line) for line in before["lines"]]
    assert [r["lr"] for r in original if r["kind"] == "train"][-1] == pytest.approx(LOW)
    assert [r["lr"] for r in train_records] == pytest.approx([LOW] * 8)
    # the checkpoints up to step 8 are untouched; the run's end moved to step 16
    digests = _digests(run)
    assert {k: digests[k] for k in before["digests"]} == before["digests"]
    assert load_checkpoint(run / "checkpoints" / "iter_00000016.pt")["schedule"] == {
        "steps": 16,
        "lr_schedule_steps": 8,
    }
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    assert any("extending the run from 8 to 16 steps" in m and "[6]" in m for m in extended["log"])
    # the checkpoint at step 8 was the finished run's: precise BN runs again at the new end
    assert any(m.startswith("precise BN") for m in extended["log"])


def test_an_extended_run_resumes_exactly_on_its_first_schedule(extended, tmp_path, tiny_data, one_thread):
    # a plain resume (no --extend: train.epochs is 8 in both) from step 12 of the extended run
    other = tmp_path / "other"
    cfg = _config(tiny_data, other, 8)
    train(config_from_dict(cfg), resume=extended["run"] / "checkpoints" / "iter_00000012.pt")
    records = [json.loads(line) for line in _lines(other)]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs == pytest.approx([LOW] * 4)  # the fractions of 16 steps would give 0.1 at step 13
    a, b = weights(extended["run"]), weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_longer_run_without_extend_a_shorter_one_and_other_changes_are_refused(
    extended, tmp_path, tiny_data, one_thread, capsys
):
    start = extended["run"] / "checkpoints" / "iter_00000008.pt"

    def refused(match: str, epochs: int, extend: bool, **sections) -> None:
        cfg = _config(tiny_data, tmp_path / "run", epochs, **sections)
        with pytest.raises(ConfigError, match=match):
            train(config_from_dict(cfg), resume=start, extend=extend)
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before writing anything

    refused(r"train\.epochs 4 -> 6.*train --extend", 6, extend=False)
    refused(r"shorter run.*6 steps.*has 8", 3, extend=True)
    refused(r"optim\.base_lr 0\.1 -> 0\.2", 6, extend=True, optim={"base_lr": 0.2})
    with pytest.raises(ConfigError, match=r"extend.*resumed run.*--resume"):
        train(config_from_dict(_config(tiny_data, tmp_path / "run", 6)), extend=True)
    config = write_config(tmp_path / "c.yaml", _config(tiny_data, tmp_path / "run", 4))
    assert main(["train", "--config", str(config), "--resume", str(start), "train.iterations=12"]) == 2
    err = capsys.readouterr().err
    assert "train.iterations 0 -> 12" in err and "--extend" in err
