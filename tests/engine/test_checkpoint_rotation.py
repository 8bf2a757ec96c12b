"""CheckpointManager: rotation removes only the run's older checkpoints; set_aside moves the
files that are not the run's past into a subfolder, intact."""

from __future__ import annotations

import torch

from nonlocalnet.engine import CheckpointManager, load_checkpoint, save_checkpoint
from nonlocalnet.engine.checkpoint import changed_settings


def _state(step: int, run: str = "new") -> dict:
    return {"model": {"w": torch.tensor([float(step)])}, "step": step, "run": run}


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (20, 30):  # higher-numbered files of another run
        save_checkpoint(tmp_path / f"iter_{step:08d}.pt", _state(step, "old"))
    for step in (5, 10, 15):
        manager.save(_state(step), step)
        names = [p.name for p in manager.checkpoints()]
        assert f"iter_{step:08d}.pt" in names, names
    assert [p.name for p in manager.checkpoints()] == [
        "iter_00000010.pt",
        "iter_00000015.pt",
        "iter_00000020.pt",
        "iter_00000030.pt",
    ]


def test_set_aside_moves_the_future_or_everything(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (3, 6, 9):
        manager.save(_state(step), step)
    manager.save_best(_state(6))
    (tmp_path / "notes.txt").write_text("kept")
    folder, moved = manager.set_aside(after=6)
    assert [p.name for p in moved] == ["iter_00000009.pt"]
    assert [p.name for p in manager.checkpoints()] == ["iter_00000003.pt", "iter_00000006.pt"]
    assert manager.best_path.is_file()  # step 6: the run's past
    assert load_checkpoint(folder / "iter_00000009.pt")["step"] == 9
    assert manager.set_aside(after=6) == (None, [])

    again, moved = manager.set_aside()  # a new run in this folder: all of them
    assert again != folder and again.name.startswith("superseded-")
    assert sorted(p.name for p in moved) == ["best.pt", "iter_00000003.pt", "iter_00000006.pt"]
    assert manager.latest() is None and not manager.best_path.exists()
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_changed_settings_names_each_change_except_the_free_ones():
    saved = {
        "output_dir": "a",
        "seed": 0,
        "train": {"batch_size": 2, "log_every": 1},
        "model": {"overrides": {}},
        "eval": {"views": "clip"},
    }
    current = {
        "output_dir": "b",
        "seed": 1,
        "train": {"batch_size": 4, "log_every": 5, "new_field": 1},
        "model": {"overrides": {"stem_width": 8}},
        "eval": {"views": "video"},
    }
    assert changed_settings(saved, current) == [
        ("model.overrides.stem_width", None, 8),
        ("seed", 0, 1),
        ("train.batch_size", 2, 4),
    ]


def test_a_field_the_saved_config_lacks_compares_at_its_default():
    """A config written before a field existed ran with the field's default: a resume that sets
    another value is a change, one that keeps the default is not; a whole section missing
    likewise. Without defaults (or a field the current config lacks) nothing is compared."""
    defaults = {"seed": 0, "optim": {"lr": 0.1, "new_mult": 1.0}, "extra": {"flag": False}}
    saved = {"seed": 0, "optim": {"lr": 0.1}}
    same = {"seed": 0, "optim": {"lr": 0.1, "new_mult": 1.0}, "extra": {"flag": False}}
    other = {"seed": 0, "optim": {"lr": 0.1, "new_mult": 10.0}, "extra": {"flag": True}}
    assert changed_settings(saved, same, defaults=defaults) == []
    assert changed_settings(saved, other, defaults=defaults) == [
        ("extra.flag", False, True),
        ("optim.new_mult", 1.0, 10.0),
    ]
    assert changed_settings(saved, other) == []  # no defaults: not compared, as before
    newer = {"seed": 0, "optim": {"lr": 0.1, "from_the_future": 3}}
    assert changed_settings(newer, {"seed": 0, "optim": {"lr": 0.1}}, defaults=defaults) == []
