"""Regressions found by a hostile review of issues 14 and 17 (CLI, configs, model overrides)."""

import pytest
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine import ConfigError, config_from_dict
from nonlocalnet.errors import InvalidTypeError, NonLocalNetError
from nonlocalnet.models import build_model


@pytest.fixture
def config_file(tiny_data, tmp_path):
    return str(write_config(tmp_path / "tiny.yaml", tiny_config(tiny_data, tmp_path / "run")))


def test_overrides_on_both_sides_of_resume_keep_their_order(config_file, capsys):
    """``train --config X a=1 --resume b=2 c=3`` was "unrecognized arguments: c=3" although the
    help says --resume may stand before or after the overrides; and the word after --resume
    was moved before the earlier overrides, so it lost to them."""
    argv = ["train", "--config", config_file]
    assert main([*argv, "train.log_every=2", "--resume", "train.log_every=3", "train.log_every=-7"]) == 2
    assert "train.log_every: must be >= 1, got -7" in capsys.readouterr().err
    assert main([*argv, "train.log_every=-5", "--resume", "train.log_every=-6"]) == 2
    assert "got -6" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # an unknown option is still argparse's error
        main([*argv, "--resume", "train.log_every=3", "--bogus"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("optim", "base_lr", -1, "optim.base_lr: must be >= 0"),
        ("optim", "momentum", -0.5, "optim.momentum: must be >= 0"),
        ("optim", "weight_decay", -1e-4, "optim.weight_decay: must be >= 0"),
        ("optim", "lr_gamma", -0.1, "optim.lr_gamma: must be >= 0"),
        ("optim", "base_lr", float("nan"), "optim.base_lr: must be >= 0"),
        ("optim", "warmup_iters", -5, "optim.warmup_iters: must be >= 0"),
        ("data", "num_workers", -1, "data.num_workers: must be >= 0"),
        ("train", "precise_bn_batches", -1, "train.precise_bn_batches: must be >= 0"),
        ("train", "dist_timeout_s", 0, "train.dist_timeout_s: must be > 0"),
        ("checkpoint", "every_iters", -1, "checkpoint.every_iters: must be >= 0"),
        ("eval", "every_epochs", -1, "eval.every_epochs: must be >= 0"),
    ],
)
def test_out_of_range_settings_are_config_errors(tiny_data, tmp_path, section, key, value, match):
    """These were accepted silently (a negative weight decay trained) or failed deep inside
    torch with a traceback (SGD's "Invalid learning rate", DataLoader's num_workers)."""
    with pytest.raises(ConfigError, match=match):
        config_from_dict(tiny_config(tiny_data, tmp_path, **{section: {key: value}}))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"stem_width": "abc"}, "override stem_width must be an int, got str 'abc'"),
        ({"stem_width": 8.0}, "override stem_width must be an int"),
        ({"stride_on_1x1": 1}, "override stride_on_1x1 must be a bool"),
        ({"stages": [1]}, "override stages must be a sequence of StageSpec"),
    ],
)
def test_wrong_override_types_name_the_field(overrides, match):
    """``build_model("c2d_r50", stem_width="abc")`` said "bad nonlocal_options None: not all
    arguments converted during string formatting"."""
    with pytest.raises(InvalidTypeError, match=match):
        build_model("c2d_r50", **overrides)


def test_nonlocal_options_must_be_a_mapping():
    with pytest.raises(
        InvalidTypeError,
        match="nonlocal_options must be a NonLocalOptions or a mapping of its fields, got int",
    ):
        build_model("c2d_nl1_r50", nonlocal_options=3)


def test_wrong_override_type_in_a_config_is_one_line(config_file, capsys):
    assert main(["train", "--config", config_file, "model.overrides.stem_width=abc"]) == 2
    err = capsys.readouterr().err
    assert "override stem_width must be an int" in err and "nonlocal_options" not in err
    assert issubclass(ConfigError, NonLocalNetError)


@pytest.mark.parametrize("h", [None, 0.1])
def test_nl_means_refuses_a_negative_sigma(h):
    """``nl_means(x, sigma=-1)`` said "h must be > 0, got [-0.8]" (the default h of a sigma the
    user gave), and with an explicit h a negative sigma was used as it was."""
    import torch

    from nonlocalnet.denoise import nl_means
    from nonlocalnet.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match=r"sigma must be >= 0, got \[-1.0\]"):
        nl_means(torch.rand(8, 8), sigma=-1.0, h=h, patch_size=3, search_window=5)


def test_a_missing_class_names_file_names_the_key(tiny_data, tmp_path):
    """``eval`` from another folder than training's, with a relative ``data.class_names`` in the
    saved config, printed only "[Errno 2] No such file or directory: 'data/classes.txt'"."""
    from nonlocalnet.engine.setup import load_samples

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path, data={"class_names": str(tmp_path / "nope.txt")}))
    with pytest.raises(ConfigError, match="data.class_names: no such file: .*nope.txt"):
        load_samples(cfg.data, "val", class_names=["red", "blue"])


def test_unreadable_weight_files_are_one_line_errors(tmp_path):
    """A YAML file given as a checkpoint printed torch's many-line weights_only message (which
    advises weights_only=False), a truncated checkpoint "[Errno 22] Invalid argument", an empty
    one nothing after the colon, and a damaged .safetensors file a SafetensorError traceback."""
    import torch

    from nonlocalnet.engine import read_model_file
    from nonlocalnet.engine.checkpoint import load_checkpoint
    from nonlocalnet.errors import InvalidValueError

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    files = {
        "config.yaml": (b"checkpoint:\n  keep_last: 10\n", "not a complete file written by torch.save"),
        "cut.pt": (
            good.read_bytes()[: good.stat().st_size // 2],
            "not a complete file written by torch.save",
        ),
        "empty.pt": (b"", "the file ends early"),
        "junk.safetensors": (b"checkpoint:\n  keep_last: 10\n", "is not a readable safetensors file"),
    }
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    for name, (_, match) in {**files, "whole.pt": (None, "Python objects besides tensors")}.items():
        path = tmp_path / name
        loaders = [read_model_file] if name.endswith(".safetensors") else [read_model_file, load_checkpoint]
        for load in loaders:
            with pytest.raises(InvalidValueError, match=match) as info:
                load(path)
            assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (["--topk", "-1"], "topk must be a positive int, got -1"),  # was a RuntimeError traceback
        (["--topk", "0"], "topk must be a positive int, got 0"),  # printed no label at all
        (["--crops", "0"], "num_crops must be a positive integer, got 0"),  # used the config's 3
        (["--clips", "0"], "num_clips must be a positive integer, got 0"),  # used the config's 2
    ],
)
def test_predict_refuses_zero_and_negative_counts(tiny_data, tmp_path, capsys, option, match):
    import torch

    from nonlocalnet.engine import config_to_dict
    from nonlocalnet.engine.setup import build_model_from_config

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path))
    model = build_model_from_config(cfg.model)
    checkpoint = tmp_path / "best.pt"
    torch.save(
        {"model": model.state_dict(), "config": config_to_dict(cfg), "class_names": ["red", "blue"]},
        checkpoint,
    )
    video = str(tiny_data["root"] / "videos" / "red_0.mp4")
    assert main(["predict", video, "--checkpoint", str(checkpoint), *option]) == 2
    assert match in capsys.readouterr().err


def test_api_entry_points_name_a_wrong_argument_type(tmp_path):
    """``train("configs/x.yaml")`` (a newcomer's first try) was "AttributeError: 'str' object has
    no attribute 'device'"; ``save_weights(path, model)`` "'str' object has no attribute
    'items'"; ``add_nonlocal(None, ...)`` "'NoneType' object has no attribute 'named_modules'"."""
    from torch import nn

    from nonlocalnet import add_nonlocal
    from nonlocalnet.engine import run_evaluation, train
    from nonlocalnet.models import save_weights

    for call, match in (
        (lambda: train("configs/c2d_r50.yaml"), r"train\(cfg\): cfg must be a Config .* got str"),
        (lambda: train({"model": {}}), r"train\(cfg\): cfg must be a Config .* got dict"),
        (
            lambda: run_evaluation("cfg.yaml", "best.pt"),
            r"run_evaluation\(cfg, checkpoint\): cfg must be a Config",
        ),
        (
            lambda: save_weights(str(tmp_path / "w.safetensors"), nn.Linear(2, 2)),
            r"save_weights\(model, path\)",
        ),
        (
            lambda: add_nonlocal(None, after=["0"]),
            r"add_nonlocal\(model, after\): model must be an nn.Module",
        ),
    ):
        with pytest.raises(InvalidTypeError, match=match):
            call()


def test_eval_under_torchrun_reports_on_rank_0_only(config_file, capsys, monkeypatch):
    """``torchrun ... -m nonlocalnet.cli eval`` printed the accuracy and "wrote ..." once per
    process, as ``train`` did before issue 14 (only rank 0 writes the files)."""
    import nonlocalnet.engine

    class Result:
        def summary(self):
            return "video accuracy ..."

    monkeypatch.setattr(
        nonlocalnet.engine,
        "run_evaluation",
        lambda cfg, checkpoint, output_dir=None, save_scores=None: Result(),
    )
    argv = ["eval", "--checkpoint", "best.pt", "--config", config_file]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert ("video accuracy" in out and "wrote " in out) == printed, (rank, out)


def test_a_config_file_giving_epochs_replaces_its_bases_iterations(tiny_data, tmp_path):
    """Every shipped config inherits ``iterations: 400000`` from kinetics400.yaml, so a user's
    ``base: kinetics400.yaml`` + ``train: {epochs: 30}`` was "train.iterations (400000) and
    train.epochs (30) are both set ... on the command line"; a file now wins over its base as the
    command line wins over the file. Both in one file stays an error."""
    from nonlocalnet.engine import load_config

    base = tiny_config(tiny_data, tmp_path / "run", train={"iterations": 400, "epochs": 0})
    write_config(tmp_path / "base.yaml", base)
    (tmp_path / "epochs.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "epochs.yaml")
    assert (cfg.train.epochs, cfg.train.iterations) == (3, 0)
    assert load_config(tmp_path / "epochs.yaml", ["train.iterations=7"]).train.iterations == 7
    (tmp_path / "both.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 3\n  iterations: 5\n")
    with pytest.raises(ConfigError, match="are both set"):
        load_config(tmp_path / "both.yaml")


@pytest.mark.parametrize(
    ("option", "match"),
    [(["--frames", "0"], "--frames must be >= 1, got 0"), (["--size", "0"], "--size must be >= 1, got 0")],
)
def test_info_refuses_zero_sizes(capsys, option, match):
    """``info MODEL --frames 0`` measured the default 32 frames; ``--size 0`` was a RuntimeError
    traceback from a convolution."""
    assert main(["info", "c2d_r50", *option]) == 2
    assert match in capsys.readouterr().err
