import pytest

from nonlocalnet import __version__
from nonlocalnet.cli import main


def test_example_runs_and_reports(capsys):
    assert main(["example", "--channels", "16", "--size", "4", "8", "8"]) == 0
    out = capsys.readouterr().out
    assert "identity at init     True" in out
    assert "N = 256 query positions, M = 64 keys" in out
    assert "sum 1.0000" in out  # embedded Gaussian weights are a distribution


@pytest.mark.parametrize("size", [["40"], ["8", "8"]])
def test_example_other_dims(capsys, size):
    assert main(["example", "--mode", "concatenation", "--channels", "8", "--size", *size]) == 0
    assert f"dim={len(size)}" in capsys.readouterr().out


def test_example_bad_size_is_a_clear_error(capsys):
    assert main(["example", "--size", "1", "1", "1"]) == 2
    assert "smaller than the pool kernel" in capsys.readouterr().err
    assert main(["example", "--size", "1", "2", "3", "4"]) == 2
    assert "--size takes 1 to 3 numbers" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_resume_does_not_swallow_an_override(tmp_path, monkeypatch):
    """``train --config X --resume data.root=/d``: the override stays an override."""
    from nonlocalnet.cli import build_parser
    from nonlocalnet.cli_video import parse_train

    def parsed(*argv):
        args = parse_train(build_parser(), ["train", "--config", "x.yaml", *argv])
        return (True if args.resume == "latest" else args.resume), args.overrides

    assert parsed("--resume", "data.root=/d", "train.epochs=2") == (True, ["data.root=/d", "train.epochs=2"])
    assert parsed("data.root=/d", "--resume") == (True, ["data.root=/d"])
    assert parsed("--resume", "run/ckpt.pt", "data.root=/d") == ("run/ckpt.pt", ["data.root=/d"])
    assert parsed("data.root=/d") == (None, ["data.root=/d"])
    monkeypatch.chdir(tmp_path)
    assert parsed("--resume", "ckpt.lr=0.1") == (True, ["ckpt.lr=0.1"])
    (tmp_path / "ckpt.lr=0.1").write_bytes(b"")  # a checkpoint whose name looks like an override
    assert parsed("--resume", "ckpt.lr=0.1") == ("ckpt.lr=0.1", [])


def test_library_errors_print_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    """A NonLocalNetError (or a file the user named) is one line and exit 2; anything else is a
    bug and propagates with its traceback instead of being dressed as "error: ..."."""
    import nonlocalnet.cli as cli
    from nonlocalnet.errors import InvalidTypeError, InvalidValueError, NonLocalNetError

    assert main(["info", "c2d_nl9_r50"]) == 2  # an unknown model: the library's ValueError
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'c2d_nl9_r50'") and "Traceback" not in err
    assert issubclass(InvalidValueError, ValueError) and issubclass(InvalidTypeError, TypeError)

    def bug(args):
        return {}["missing"]  # a KeyError from a mistake in the code

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=bug)
    with pytest.raises(KeyError):
        main(["models"])

    def plain_type_error(args):
        return len(3)  # TypeError raised by Python, not by the library

    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=plain_type_error)
    with pytest.raises(TypeError) as info:
        main(["models"])
    assert not isinstance(info.value, NonLocalNetError)


@pytest.mark.parametrize(
    ("option", "match"),
    [(["--frames", "0"], "--frames must be >= 1, got 0"), (["--size", "0"], "--size must be >= 1, got 0")],
)
def test_info_refuses_zero_sizes(capsys, option, match):
    """``info MODEL --frames 0`` measured the default 32 frames; ``--size 0`` was a RuntimeError
    traceback from a convolution."""
    assert main(["info", "c2d_r50", *option]) == 2
    assert match in capsys.readouterr().err
