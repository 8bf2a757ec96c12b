"""The training engine through the real CLI: overfitting, evaluation, prediction, broken data,
resume after SIGKILL, and 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from png_header import png_size
from safetensors.torch import load_file
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main

PYTHON = sys.executable


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [PYTHON, "-m", "nonlocalnet.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tiny_model_overfits_then_eval_and_predict(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tiny_data, tmp_path / "run", train={"epochs": 12})
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    out = capsys.readouterr().out
    assert "final validation: clip top-1" in out and "video top-1" in out
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "classes.txt"):
        assert (run / name).is_file(), name
    assert png_size(run / "curves.png") == (1210, 374)  # loss, accuracy, lr: 11 x 3.4 in at 110 dpi
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_eval"]["video_top1"] == 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 25))
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]

    ckpt = run / "checkpoints" / "iter_00000024.pt"
    assert main(["eval", "--checkpoint", str(ckpt), "--output", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "clip accuracy (1 view)" in out and "video accuracy (6 views averaged)" in out
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["video_top1"] == 1.0 and report["views_per_video"] == 2 * 3 and report["num_videos"] == 8
    for name in ("per_class.csv", "confusion.csv"):
        assert (tmp_path / "eval" / name).is_file()
    assert png_size(tmp_path / "eval" / "confusion.png") == (495, 495)  # 2 classes: 4.5 in at 110 dpi
    assert (tmp_path / "eval" / "confusion.csv").read_text().splitlines()[1:] == ["red,4,0", "blue,0,4"]

    video = tiny_data["root"] / "videos" / "blue_0.mp4"
    feats = tmp_path / "f.npy"
    assert main(["predict", str(video), "--checkpoint", str(ckpt), "--features", str(feats)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(6 views averaged)" in lines[0] and lines[1].split()[1] == "blue"
    assert np.load(feats).shape == (32,)  # res3 of the toy model: 4 * 8 channels


def test_broken_videos_are_counted_listed_and_stop_the_run_over_the_threshold(tmp_path, tiny_data, capsys):
    root = tmp_path / "data"
    root.mkdir()
    lines = [f"{tiny_data['root'] / line}" for line in tiny_data["list"].read_text().splitlines()]
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(os.urandom(3000))
    lines += [f"{root / 'empty.mp4'} 0", f"{root / 'junk.mp4'} 1", f"{root / 'missing.mp4'} 1"]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    data = {**tiny_data, "list": root / "list.txt"}
    cfg = tiny_config(
        data, tmp_path / "run", train={"epochs": 1, "batch_size": 1}, data={"bad_data_threshold": 0.5}
    )
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    out = capsys.readouterr().out
    assert "broken videos skipped: 3" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    listed = sorted(Path(f["path"]).name for f in summary["bad_data"]["bad"])
    assert listed == ["empty.mp4", "junk.mp4", "missing.mp4"]
    assert summary["val_bad_data"]["count"] == 3  # validation lists them too, and scores the rest
    assert summary["final_eval"]["num_videos"] == 8

    cfg["data"]["bad_data_threshold"] = 0.01
    cfg["output_dir"] = str(tmp_path / "run2")
    assert main(["train", "--config", str(write_config(tmp_path / "c2.yaml", cfg))]) == 1
    err = capsys.readouterr().err
    assert "DataQualityError" in err and "threshold" in err

    assert main(["check-data", "--list", str(root / "list.txt"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert out.count("BAD ") == 3 and "checked 11 videos" in out


def test_bad_config_errors_name_the_key(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tiny_data, tmp_path / "run")
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", "--config", str(path), "train.btach_size=2"]) == 2
    assert "unknown config key 'train.btach_size'" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "data.train_list=/nonexistent/list.txt"]) == 2
    assert "data.train_list: no such file: /nonexistent/list.txt" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "model.num_classes=5"]) == 2
    assert "model.num_classes is 5 but the data has 2 classes" in capsys.readouterr().err


def _kill_when(proc: subprocess.Popen, path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"run ended or timed out before {path} appeared: {proc.communicate()}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_mid_epoch_gives_the_same_weights(tmp_path, tiny_data):
    # 8 videos, batch 2: 4 steps per epoch; checkpoints every 5 steps are mid-epoch (5, 10, 15).
    def config(name: str) -> Path:
        cfg = tiny_config(
            tiny_data,
            tmp_path / name,
            model={"dropout": 0.3},
            train={"epochs": 6, "batch_size": 2},
            checkpoint={"every_iters": 5},
        )
        return write_config(tmp_path / f"{name}.yaml", cfg)

    whole = subprocess.run(_cli("train", "--config", str(config("whole"))), env=_env(), capture_output=True)
    assert whole.returncode == 0, whole.stderr.decode()[-3000:]

    killed = subprocess.Popen(
        _cli("train", "--config", str(config("killed"))), env=_env(), stderr=subprocess.PIPE
    )
    _kill_when(killed, tmp_path / "killed" / "checkpoints" / "iter_00000005.pt")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = subprocess.run(
        _cli("train", "--config", str(config("killed")), "--resume"), env=_env(), capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    log = resumed.stderr.decode()
    step = int(log.split("resumed from ")[1].split(" at step ")[1].split()[0])
    assert step % 4 != 0, f"resumed at an epoch boundary ({step}); the test wants mid-epoch"

    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    whole_steps = [
        json.loads(x)["step"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == whole_steps  # nothing logged twice, nothing lost


def _ddp_config(tmp_path: Path, tiny_data, name: str, batch: int, **train) -> Path:
    cfg = tiny_config(
        tiny_data,
        tmp_path / name,
        model={"backbone_norm": "affine"},
        train={"epochs": 2, "batch_size": batch, **train},
        eval={"every_epochs": 0},
    )
    return write_config(tmp_path / f"{name}.yaml", cfg)


def test_two_process_ddp_equals_one_process_with_the_doubled_batch(tmp_path, tiny_data):
    one = subprocess.run(
        _cli("train", "--config", str(_ddp_config(tmp_path, tiny_data, "one", 4))),
        env=_env(),
        capture_output=True,
    )
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    two = subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "nonlocalnet.cli",
            "train",
            "--config",
            str(_ddp_config(tmp_path, tiny_data, "two", 2)),
        ],
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    out = two.stdout.decode()
    assert out.count("wrote ") == 1 and out.count("final validation") == 1, out  # rank 0 alone speaks
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(a["fc.weight"], torch.zeros_like(a["fc.weight"]))
    ra = json.loads((tmp_path / "one" / "summary.json").read_text())["final_eval"]
    rb = json.loads((tmp_path / "two" / "summary.json").read_text())["final_eval"]
    assert ra["num_videos"] == rb["num_videos"] == 8
    assert ra["video_top1"] == pytest.approx(rb["video_top1"])


def test_a_dead_worker_makes_the_other_exit_with_a_clear_error(tmp_path, tiny_data):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
        )
        cfg = _ddp_config(tmp_path, tiny_data, "dead", 2, epochs=2000, dist_timeout_s=60.0)
        procs.append(subprocess.Popen(_cli("train", "--config", str(cfg)), env=env, stderr=subprocess.PIPE))
    metrics = tmp_path / "dead" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    start = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
    assert time.monotonic() - start < 90
    assert procs[0].returncode == 1
    assert "DistributedError" in err.decode() and "rank 0/2" in err.decode()
