"""``train.epochs`` and ``train.iterations`` (issue 17, item 7): the command line wins over the
file (every shipped config sets ``iterations``, so ``train.epochs=N`` must replace it); both in
the same place is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine.config import ConfigError, apply_overrides
from nonlocalnet.engine.state import total_steps
from nonlocalnet.tasks import config_from_dict, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_the_shipped_configs_set_iterations():
    assert len(CONFIGS) == 43
    for path in CONFIGS:
        assert load_config(path).train.iterations == 400000, path.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_epochs_on_the_command_line_replace_the_files_iterations(path):
    cfg = load_config(path, ["train.epochs=3"])
    assert (cfg.train.epochs, cfg.train.iterations) == (3, 0)
    assert total_steps(cfg, steps_per_epoch=100) == 300


def test_iterations_on_the_command_line_replace_the_files_epochs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\n")
    cfg = load_config(path, ["train.iterations=7"])
    assert (cfg.train.epochs, cfg.train.iterations) == (0, 7)
    assert total_steps(cfg, steps_per_epoch=100) == 7


def test_a_zero_override_does_not_clear_the_other_setting():
    cfg = load_config(CONFIGS[0], ["train.epochs=0"])
    assert (cfg.train.epochs, cfg.train.iterations) == (0, 400000)


def test_both_in_one_place_is_an_error_naming_the_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.iterations.*train\.epochs"):
        load_config(CONFIGS[0], ["train.epochs=3", "train.iterations=10"])
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\n  iterations: 10\n")
    with pytest.raises(ConfigError, match=r"train\.iterations.*train\.epochs"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"train\.iterations.*train\.epochs"):
        config_from_dict({"train": {"epochs": 5, "iterations": 10}})


def test_apply_overrides_on_a_saved_config_lets_the_override_win():
    saved = {"train": {"epochs": 0, "iterations": 400000, "batch_size": 8}}
    data = apply_overrides(saved, ["train.epochs=2"])
    assert data["train"] == {"epochs": 2, "iterations": 0, "batch_size": 8}
    assert saved["train"]["iterations"] == 400000  # the input is not modified


def test_train_epochs_on_the_command_line_sets_the_length_of_a_run(tmp_path, tiny_data):
    cfg = tiny_config(tiny_data, tmp_path / "run", eval={"every_epochs": 0})
    cfg["train"] = {**cfg["train"], "iterations": 6}  # as the shipped configs (400000), but short
    del cfg["train"]["epochs"]
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", "--config", str(path), "train.epochs=1"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2  # 8 videos, batch 4: one epoch, not the file's 6 steps


def test_predict_loads_a_checkpoint_written_before_both_were_refused(tmp_path, tiny_data):
    from nonlocalnet.engine.checkpoint import save_checkpoint
    from nonlocalnet.engine.config import config_to_dict
    from nonlocalnet.tasks.video import build_model_from_config, load_trained_model

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run"))
    saved = config_to_dict(cfg)
    saved["train"].update(iterations=6, epochs=2)  # an old run given train.epochs: it ran 6 steps
    model = build_model_from_config(cfg.model)
    path = save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "config": saved})
    _, loaded, names = load_trained_model(path)
    assert (loaded.train.iterations, loaded.train.epochs) == (6, 0)
    assert names == ["red", "blue"]  # no names in the checkpoint: its config's data.class_names


def test_a_config_file_giving_epochs_replaces_its_bases_iterations(tiny_data, tmp_path):
    """Every shipped config inherits ``iterations: 400000`` from kinetics400.yaml, so a user's
    ``base: kinetics400.yaml`` + ``train: {epochs: 30}`` was "train.iterations (400000) and
    train.epochs (30) are both set ... on the command line"; a file now wins over its base as the
    command line wins over the file. Both in one file stays an error."""
    base = tiny_config(tiny_data, tmp_path / "run", train={"iterations": 400, "epochs": 0})
    write_config(tmp_path / "base.yaml", base)
    (tmp_path / "epochs.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "epochs.yaml")
    assert (cfg.train.epochs, cfg.train.iterations) == (3, 0)
    assert load_config(tmp_path / "epochs.yaml", ["train.iterations=7"]).train.iterations == 7
    (tmp_path / "both.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 3\n  iterations: 5\n")
    with pytest.raises(ConfigError, match="are both set"):
        load_config(tmp_path / "both.yaml")
