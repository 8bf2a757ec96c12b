"""Resume matrix: a run interrupted and resumed (same settings; another batch size; another
process count; in a used folder; killed twice in a row; from an older checkpoint) ends with the
weights and metrics of the uninterrupted run wherever it claims to continue exactly (bit-exact),
continues up to rounding where only the split of a step's clips changes on a model without
BatchNorm or dropout, and otherwise refuses with a message naming the changed setting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from launch import metrics, train, train_killed_after_step, train_killed_at, weights
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine import CheckpointManager, load_checkpoint, save_checkpoint
from nonlocalnet.engine import train as train_in_process
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.tasks import config_from_dict

# 8 videos, batch 2: 4 steps per epoch, 12 in all; checkpoints at 3, 6, 9 (mid-epoch) and 12.
EXACT = {"model": {"dropout": 0.3}}  # BatchNorm and dropout: only the same layout is exact
SPLIT_FREE = {"model": {"dropout": 0.0, "backbone_norm": "affine"}}  # no batch statistics, no dropout


def _config(folder: Path, name: str, tiny_data, model: dict, **sections) -> dict:
    base = {
        "train": {"epochs": 3, "batch_size": 2},
        "checkpoint": {"every_iters": 3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return tiny_config(tiny_data, folder / name, model=model, **base)


def _write(folder: Path, name: str, tiny_data, model: dict, **sections) -> Path:
    return write_config(folder / f"{name}.yaml", _config(folder, name, tiny_data, model, **sections))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """The uninterrupted runs (one process, as a subprocess)."""
    folder = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, model in (("exact", EXACT["model"]), ("split_free", SPLIT_FREE["model"])):
        train(_write(folder, name, tiny_data, model))
        runs[name] = folder / name
    return runs


def _assert_same_weights(run: Path, ref: Path) -> None:
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_close_weights(run: Path, ref: Path) -> None:
    a, b = weights(ref), weights(run)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def _steps(folder: Path) -> list[int]:
    return [int(p.name[5:13]) for p in CheckpointManager(folder / "checkpoints").checkpoints()]


def test_killed_twice_in_a_row_and_resumed_equals_the_uninterrupted_run(tmp_path, tiny_data, reference):
    config = _write(tmp_path, "run", tiny_data, EXACT["model"], checkpoint={"keep_last": 2})
    ckpts = tmp_path / "run" / "checkpoints"
    train_killed_at(config, ckpts / "iter_00000003.pt")
    first = _steps(tmp_path / "run")[-1]
    assert first <= 6, f"the first run got to step {first} before it was killed"
    train_killed_at(config, ckpts / f"iter_{first + 3:08d}.pt", "--resume")
    assert _steps(tmp_path / "run")[-1] > first
    train(config, "--resume")
    _assert_same_weights(tmp_path / "run", reference["exact"])
    assert metrics(tmp_path / "run") == metrics(reference["exact"])
    assert _steps(tmp_path / "run") == [9, 12]  # keep_last 2
    assert not list(ckpts.glob("superseded-*"))  # nothing of another run was there


@pytest.mark.parametrize("workers", [2, 4])
def test_loader_workers_change_nothing_killed_after_a_checkpoint_then_mid_epoch(
    tmp_path, tiny_data, reference, workers
):
    """With loader workers, a run killed right after the step-3 checkpoint, resumed, killed
    again mid-epoch after step 7 (2 steps past the step-6 checkpoint) and resumed once more ends
    with the weights and metrics of the uninterrupted run without workers."""
    config = _write(tmp_path, "run", tiny_data, EXACT["model"], data={"num_workers": workers})
    run = tmp_path / "run"
    train_killed_at(config, run / "checkpoints" / "iter_00000003.pt")
    assert _steps(run) == [3]
    train_killed_after_step(config, run, 7, "--resume")
    assert _steps(run)[-1] in (4, 6)  # the epoch's validation checkpoint, then the step-6 one
    train(config, "--resume")
    _assert_same_weights(run, reference["exact"])
    assert metrics(run) == metrics(reference["exact"])


def test_a_run_in_a_used_folder_keeps_and_resumes_its_own_checkpoints(tmp_path, tiny_data, reference):
    # The folder holds a longer run of another seed (checkpoints 4, 8, 12, 16). The new run
    # (keep_last 2) must neither delete its own checkpoints in favour of those nor resume from
    # them: they are moved to checkpoints/superseded-*, intact.
    old = _config(
        tmp_path,
        "run",
        tiny_data,
        EXACT["model"],
        train={"epochs": 4},
        checkpoint={"every_iters": 4, "keep_last": 10},
    )
    train(write_config(tmp_path / "old.yaml", {**old, "seed": 1}))
    ckpts = tmp_path / "run" / "checkpoints"
    old_files = sorted(p.name for p in ckpts.iterdir())
    assert "iter_00000016.pt" in old_files and "best.pt" in old_files

    config = _write(tmp_path, "run", tiny_data, EXACT["model"], checkpoint={"keep_last": 2})
    train_killed_at(config, ckpts / "iter_00000003.pt")
    train(config, "--resume")
    _assert_same_weights(tmp_path / "run", reference["exact"])
    assert metrics(tmp_path / "run") == metrics(reference["exact"])
    assert _steps(tmp_path / "run") == [9, 12]
    assert load_checkpoint(ckpts / "iter_00000012.pt")["config"]["seed"] == 0
    (aside,) = ckpts.glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == old_files
    assert load_checkpoint(aside / "iter_00000016.pt")["config"]["seed"] == 1


def test_resuming_from_an_older_checkpoint_sets_the_discarded_future_aside(
    tmp_path, tiny_data, reference, one_thread, monkeypatch
):
    # A finished run's folder (checkpoints 3, 4, 6, 8, 9, 12 and best.pt), resumed from step 3 with
    # other checkpoint settings: every checkpoint this run writes must stay, and be the newest.
    shutil.copytree(reference["exact"], tmp_path / "run")
    listings = []
    save = CheckpointManager.save

    def recording_save(self, state, step):
        path = save(self, state, step)
        listings.append((step, _steps(tmp_path / "run")))
        return path

    monkeypatch.setattr(CheckpointManager, "save", recording_save)
    cfg = _config(tmp_path, "run", tiny_data, EXACT["model"], checkpoint={"every_iters": 5, "keep_last": 2})
    ckpts = tmp_path / "run" / "checkpoints"
    train_in_process(config_from_dict(cfg), resume=ckpts / "iter_00000003.pt")
    # 4, 8, 12 validate: written before the validation, then again with its outcome
    assert listings == [
        (4, [3, 4]), (4, [3, 4]), (5, [4, 5]), (8, [5, 8]), (8, [5, 8]), (10, [8, 10]), (12, [10, 12]),
        (12, [10, 12]),
    ]  # fmt: skip
    _assert_same_weights(tmp_path / "run", reference["exact"])
    assert metrics(tmp_path / "run") == metrics(reference["exact"])
    (aside,) = ckpts.glob("superseded-*")
    future = {f"iter_{s:08d}.pt" for s in (4, 6, 8, 9, 12)}
    assert future <= {p.name for p in aside.iterdir()}
    best_step = load_checkpoint(reference["exact"] / "checkpoints" / "best.pt")["step"]
    assert ((aside / "best.pt").is_file()) == (best_step > 3)


def test_resuming_with_another_total_batch_or_changed_settings_is_refused(
    tmp_path, tiny_data, reference, one_thread, capsys
):
    start = reference["exact"] / "checkpoints" / "iter_00000006.pt"

    def refused(match: str, **sections) -> None:
        cfg = _config(tmp_path, "run", tiny_data, EXACT["model"], **sections)
        with pytest.raises(ConfigError, match=match):
            train_in_process(config_from_dict(cfg), resume=start)
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before writing anything

    refused(r"train\.batch_size 2 -> 4.*from 2 to 4", train={"batch_size": 4})
    refused(r"train\.grad_accum 1 -> 2", train={"grad_accum": 2})
    # the same 2 clips per step, split into 2 micro-batches: BatchNorm and dropout see the split
    refused(
        r"train\.batch_size 2 -> 1, train\.grad_accum 1 -> 2.*BatchNorm.*dropout",
        train={"batch_size": 1, "grad_accum": 2},
    )
    refused(r"optim\.base_lr 0\.1 -> 0\.2", optim={"base_lr": 0.2})
    refused(r"optim\.nonlocal_lr_mult 1\.0 -> 10\.0", optim={"nonlocal_lr_mult": 10.0})
    refused(r"train\.epochs 3 -> 4", train={"epochs": 4})
    cfg = _config(tmp_path, "run", tiny_data, EXACT["model"])
    path = write_config(tmp_path / "c.yaml", {**cfg, "seed": 1})
    assert main(["train", "--config", str(path), "--resume", str(start), "train.batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size 2 -> 4" in err and "seed 0 -> 1" in err and "model.init=checkpoint" in err


def test_another_split_of_the_same_batch_continues_a_model_without_batchnorm_or_dropout(
    tmp_path, tiny_data, reference, one_thread
):
    start = reference["split_free"] / "checkpoints" / "iter_00000006.pt"
    cfg = _config(tmp_path, "run", tiny_data, SPLIT_FREE["model"], train={"batch_size": 1, "grad_accum": 2})
    result = train_in_process(config_from_dict(cfg), resume=start)
    assert result.steps == 12
    _assert_close_weights(tmp_path / "run", reference["split_free"])
    ref = [r for r in metrics(reference["split_free"]) if r["step"] > 6]
    got = metrics(tmp_path / "run")
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in ref]
    for a, b in zip(got, ref, strict=True):
        key = "loss" if a["kind"] == "train" else "video_top1"
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6)


def test_another_process_count(tmp_path, tiny_data, reference):
    start = reference["split_free"] / "checkpoints" / "iter_00000003.pt"
    # 1 process x 2 clips -> 2 processes x 2 clips: another total batch, refused
    config = _write(tmp_path, "four", tiny_data, SPLIT_FREE["model"])
    done = train(config, "--resume", str(start), procs=2, check=False)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "processes 1 -> 2" in err and "from 2 to 4" in err
    assert not (tmp_path / "four" / "model.safetensors").exists()
    # 1 process x 2 clips -> 2 processes x 1 clip: the same clips per step, continued
    config = _write(tmp_path, "two", tiny_data, SPLIT_FREE["model"], train={"batch_size": 1})
    done = train(config, "--resume", str(start), procs=2)
    assert "split differently" in done.stderr.decode()
    _assert_close_weights(tmp_path / "two", reference["split_free"])


def test_a_checkpoint_of_another_format_is_refused_before_any_work(tmp_path, tiny_data, reference):
    state = load_checkpoint(reference["exact"] / "checkpoints" / "iter_00000006.pt")
    del state["progress"]
    state["format"] = "nonlocalnet-train-v1"
    save_checkpoint(tmp_path / "v1.pt", state)
    cfg = _config(tmp_path, "run", tiny_data, EXACT["model"])
    with pytest.raises(ConfigError, match=r"its format is 'nonlocalnet-train-v1'.*model\.init=checkpoint"):
        train_in_process(config_from_dict(cfg), resume=tmp_path / "v1.pt")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_from_before_nonlocal_lr_mult_is_refused_a_new_mult_by_name(
    tmp_path, tiny_data, reference, one_thread
):
    # written before the setting existed: it trained the blocks at lr x 1 (two parameter groups)
    state = load_checkpoint(reference["exact"] / "checkpoints" / "iter_00000006.pt")
    del state["config"]["optim"]["nonlocal_lr_mult"]
    save_checkpoint(tmp_path / "old.pt", state)
    cfg = _config(tmp_path, "run", tiny_data, EXACT["model"], optim={"nonlocal_lr_mult": 10.0})
    with pytest.raises(ConfigError, match=r"optim\.nonlocal_lr_mult 1\.0 -> 10\.0"):
        train_in_process(config_from_dict(cfg), resume=tmp_path / "old.pt")
    train_in_process(
        config_from_dict(_config(tmp_path, "run", tiny_data, EXACT["model"])), resume=tmp_path / "old.pt"
    )
    _assert_same_weights(tmp_path / "run", reference["exact"])


def test_resuming_another_folders_checkpoint_in_a_used_folder(tmp_path, tiny_data, reference, one_thread):
    # The folder holds another run (seed 1): its checkpoints and log are not this run's past.
    old = _config(tmp_path, "run", tiny_data, EXACT["model"], checkpoint={"every_iters": 4})
    train_in_process(config_from_dict({**old, "seed": 1}))
    ckpts = tmp_path / "run" / "checkpoints"
    old_files = sorted(p.name for p in ckpts.iterdir())
    cfg = _config(tmp_path, "run", tiny_data, EXACT["model"])
    train_in_process(config_from_dict(cfg), resume=reference["exact"] / "checkpoints" / "iter_00000006.pt")
    _assert_same_weights(tmp_path / "run", reference["exact"])
    assert metrics(tmp_path / "run") == [r for r in metrics(reference["exact"]) if r["step"] > 6]
    (aside,) = ckpts.glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == old_files
    assert _steps(tmp_path / "run") == [8, 9, 12]  # 8: the epoch's validation, checkpointed first
