"""The video commands of the CLI (``nonlocalnet.cli_video``): train's overrides around --resume,
one-line errors, predict's counts and eval under torchrun."""

import pytest
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine import ConfigError
from nonlocalnet.errors import NonLocalNetError
from nonlocalnet.tasks import config_from_dict


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


def test_wrong_override_type_in_a_config_is_one_line(config_file, capsys):
    assert main(["train", "--config", config_file, "model.overrides.stem_width=abc"]) == 2
    err = capsys.readouterr().err
    assert "override stem_width must be an int" in err and "nonlocal_options" not in err
    assert issubclass(ConfigError, NonLocalNetError)


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
    from nonlocalnet.tasks.video import build_model_from_config

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


def test_eval_under_torchrun_reports_on_rank_0_only(config_file, capsys, monkeypatch):
    """``torchrun ... -m nonlocalnet.cli eval`` printed the accuracy and "wrote ..." once per
    process, as ``train`` did before issue 14 (only rank 0 writes the files)."""
    import nonlocalnet.tasks.video

    class Result:
        def summary(self):
            return "video accuracy ..."

    monkeypatch.setattr(
        nonlocalnet.tasks.video,
        "run_evaluation",
        lambda cfg, checkpoint, output_dir=None, save_scores=None: Result(),
    )
    argv = ["eval", "--checkpoint", "best.pt", "--config", config_file]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert ("video accuracy" in out and "wrote " in out) == printed, (rank, out)
