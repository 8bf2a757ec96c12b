"""The engine is task-agnostic: a config's ``task`` chooses the task (video classification by
default), and a task that is not video at all, registered with its own config class, trains,
logs, checkpoints, resumes exactly, evaluates and predicts through the same entry points, which
know nothing of it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_video import tiny_config
from torch import nn

import nonlocalnet.engine
from nonlocalnet.data import build_loader
from nonlocalnet.engine import (
    TASKS,
    Config,
    ConfigError,
    Evaluation,
    HookBase,
    StepLoss,
    Task,
    TaskEntry,
    build_task,
    config_from_dict,
    evaluate,
    load_checkpoint,
    predict,
    read_jsonl,
    register_task,
    train,
)
from nonlocalnet.errors import ValidationError
from nonlocalnet.tasks import VideoClassification


class _Points(torch.utils.data.Dataset):
    """Two Gaussian blobs in 8-D, as the items :func:`build_loader`'s collate takes."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.x = torch.randn(n, 8, generator=gen) + 2.0 * self.labels[:, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.x[i], "label": int(self.labels[i]), "index": i, "clip": 0}


class _NotATask:
    label = "half a task"

    def __init__(self, cfg) -> None:
        self.cfg = cfg


@dataclasses.dataclass
class PointConfig(Config):
    """The points task's config: the engine's sections and the MLP's width."""

    hidden: int = 16


class PointTask:
    """A non-video task: an MLP classifying points."""

    label = "points"
    sample_noun = "point"
    resume_free_settings = ()
    has_validation = True
    validation_files = ("points-val",)
    train_metrics = ("correct",)

    def __init__(self, cfg, *, fail_at_step: int | None = None, fail_validation: int | None = None) -> None:
        self.cfg, self.fail_at_step, self.calls = cfg, fail_at_step, 0
        self.fail_validation, self.validations = fail_validation, 0
        self.train_set, self.val_set = _Points(16, 0), _Points(8, 1)

    def build_model(self):
        hidden = getattr(self.cfg, "hidden", 16)
        return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2)), "random MLP"

    def train_loader(self, *, distributed, num_workers, epoch=0, start_batch=0):
        return build_loader(
            self.train_set,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            num_workers=num_workers,
            distributed=distributed,
            drop_last=True,
            start_batch=start_batch,
            epoch=epoch,
        )

    def set_epoch(self, loader, epoch):
        loader.sampler.set_epoch(epoch)

    def memory_format(self, model, device):
        return torch.contiguous_format

    def model_input(self, batch, device, memory_format):
        return batch.video.to(device)

    def example_input(self, device, memory_format):
        return torch.zeros(1, 8, device=device)

    def placeholder_loss(self, net, device, memory_format):
        return net(self.example_input(device, memory_format))

    def loss(self, net, batch, device, memory_format):
        self.calls += 1
        if self.calls == self.fail_at_step:
            raise KeyboardInterrupt("killed")
        logits = net(self.model_input(batch, device, memory_format))
        labels = batch.label.to(device)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        return StepLoss(loss, {"correct": float((logits.argmax(1) == labels).sum())})

    def evaluate(self, model, ctx, *, memory_format):
        self.validations += 1
        if self.validations == self.fail_validation:
            raise TypeError("Argument 'bb' has incorrect type")  # as COCOeval on a degenerate polygon
        torch.rand(3)  # the engine must keep the training RNG out of the validation's reach
        with torch.no_grad():
            accuracy = (model(self.val_set.x).argmax(1) == self.val_set.labels).float().mean().item()
        return Evaluation({"accuracy": accuracy}, accuracy, [])

    def checkpoint_extras(self):
        return {"points": len(self.train_set)}

    def write_run_files(self, folder: Path) -> None:
        (folder / "points.txt").write_text("16\n")

    def load_weights(self, model, path):
        model.load_state_dict(load_checkpoint(path)["model"])
        return f"the weights of {path}"

    def predict(self, model, inputs, *, device):
        with torch.no_grad():
            logits = model(torch.tensor(inputs, dtype=torch.float32, device=device))
        return [{"class": int(c)} for c in logits.argmax(1)]


def _config(out: Path, every_iters: int = 2):
    return config_from_dict(
        {
            "output_dir": str(out),
            "data": {"num_workers": 0},
            "optim": {"base_lr": 0.1, "base_batch_size": 4},
            "train": {"batch_size": 4, "epochs": 3, "log_every": 1, "progress": False},
            "checkpoint": {"every_iters": every_iters, "keep_last": 10},
            "eval": {"every_epochs": 1},
        }
    )


def test_the_default_task_is_video_classification(tmp_path, tiny_data):
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path))
    assert cfg.task == "video_classification"
    task = build_task(cfg)
    assert isinstance(task, VideoClassification) and isinstance(task, Task)
    assert task.class_names == ["red", "blue"] and task.train_metrics == ("top1",)
    assert isinstance(PointTask(cfg), Task)


def test_an_unknown_task_is_a_config_error_naming_the_known_ones(tmp_path, tiny_data):
    with pytest.raises(
        ConfigError, match=r"task: 'segmentation' is not one of \['detection', 'video_classification'\]"
    ):
        config_from_dict(tiny_config(tiny_data, tmp_path, task="segmentation"))


def _point_config(out: Path, every_iters: int = 2) -> PointConfig:
    cfg = _config(out, every_iters)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)}
    return PointConfig(**fields | {"task": "points"})


@pytest.fixture
def points_registered(monkeypatch):
    """The points task in the registry for one test (``register_task``, undone afterwards)."""
    monkeypatch.setattr(nonlocalnet.engine.task, "TASKS", dict(TASKS))
    monkeypatch.setattr(nonlocalnet.engine, "TASKS", nonlocalnet.engine.task.TASKS)
    register_task("points", PointTask, PointConfig)
    return nonlocalnet.engine.task.TASKS


def test_a_registered_task_is_built_from_the_config(tmp_path, points_registered):
    assert points_registered["points"] == TaskEntry(PointTask, PointConfig)
    cfg = _point_config(tmp_path)
    assert isinstance(build_task(cfg), PointTask)
    register_task("broken", _NotATask, Config)
    cfg.task = "broken"
    with pytest.raises(TypeError, match="lacks .*'build_model'"):
        build_task(cfg)
    with pytest.raises(TypeError, match="config_class must be a subclass"):
        register_task("points", PointTask, dict)
    with pytest.raises(TypeError, match="task_class must be a class"):
        register_task("points", "tests:PointTask", PointConfig)


def test_the_engine_names_no_task():
    """The engine's modules speak of samples, not of videos, clips or images, and import no
    task; the default task's name is the one exception."""
    engine = Path(nonlocalnet.engine.__file__).parent
    names = re.compile(
        r"video|clip|frame|detection|image|channels_last_3d|PointTask|\bpoints\b", re.IGNORECASE
    )
    imports = re.compile(r"^\s*(from|import)\s+nonlocalnet\.tasks", re.MULTILINE)
    for path in sorted(engine.glob("*.py")):
        if path.name == "__init__.py":
            continue
        # the one name: the task a config without ``task:`` means
        text = path.read_text().replace('task: str = "video_classification"', "")
        assert not names.findall(text), (path.name, sorted(set(names.findall(text))))
        assert not imports.search(text), path.name


class _Recorder(HookBase):
    """A user's hook: counts the steps, records each step's lr, logs a scalar."""

    def __init__(self) -> None:
        self.started = self.finished = 0
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def before_train(self, trainer) -> None:
        self.started += 1

    def before_step(self, trainer) -> None:
        trainer.put_scalar("double_step", 2 * (trainer.state.step + 1))

    def after_step(self, trainer) -> None:
        self.steps.append(trainer.state.step)
        self.lrs.append(trainer.state.lr)

    def after_train(self, trainer) -> None:
        self.finished += 1


def test_a_user_hook_sees_every_step_and_adds_to_the_metrics_log(tmp_path, one_thread, points_registered):
    cfg = _point_config(tmp_path / "run")
    hook = _Recorder()
    result = train(cfg, hooks=[hook])
    assert result.steps == 12 and hook.steps == list(range(1, 13)) and (hook.started, hook.finished) == (1, 1)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in records] == hook.lrs
    assert [r["double_step"] for r in records] == [2 * r["step"] for r in records]


def test_a_registered_task_trains_evaluates_and_predicts_by_its_name(tmp_path, one_thread, points_registered):
    cfg = _point_config(tmp_path / "run")
    result = train(cfg)
    weights = tmp_path / "run" / "checkpoints" / "iter_00000012.pt"
    evaluation = evaluate(cfg, weights=weights)
    assert evaluation.record["accuracy"] == result.final_eval["accuracy"] == evaluation.metric > 0.5
    assert 0.0 <= evaluate(cfg).metric <= 1.0  # the initial weights
    out = predict(cfg, [[0.0] * 8, [2.0] * 8], weights=weights)
    assert out == [{"class": 0}, {"class": 1}]
    with pytest.raises(TypeError, match="a sequence"):
        predict(cfg, "points.txt", weights=weights)


def test_a_non_video_task_trains_logs_checkpoints_and_resumes_exactly(tmp_path, one_thread):
    ref = _config(tmp_path / "ref")
    result = train(ref, task=PointTask(ref))
    assert result.steps == 12 and result.final_eval["accuracy"] > 0.5
    records = read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 13))
    assert all(0.0 <= r["correct"] <= 1.0 and r["loss"] > 0 for r in train_records)
    assert [r["step"] for r in records if r["kind"] == "val"] == [4, 8, 12]
    assert (tmp_path / "ref" / "points.txt").read_text() == "16\n"
    assert load_checkpoint(tmp_path / "ref" / "checkpoints" / "iter_00000006.pt")["points"] == 16

    cfg = _config(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, task=PointTask(cfg, fail_at_step=7))  # killed in step 7: checkpoint 6 is the last
    train(cfg, task=PointTask(cfg), resume=True)
    a, b = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "run" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def timeless(log):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in log]

    assert timeless(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == timeless(records)


def _timeless(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in log]


@pytest.mark.parametrize("failing", [1, 3])  # the validation after step 4 (mid-run), after step 12 (final)
def test_a_failing_validation_costs_no_training_and_resume_validates_then_continues(
    tmp_path, one_thread, failing
):
    """Checkpoints every 3 steps, validation every 4 (epoch ends): the step-4 checkpoint is
    written before its validation, the failure names the data and that checkpoint, and a
    resume validates step 4 first, then continues as the uninterrupted run did."""
    ref = _config(tmp_path / "ref", every_iters=3)
    train(ref, task=PointTask(ref))
    cfg = _config(tmp_path / "run", every_iters=3)
    with pytest.raises(ValidationError) as info:
        train(cfg, task=PointTask(cfg, fail_validation=failing))
    step = 4 * failing
    ckpt = tmp_path / "run" / "checkpoints" / f"iter_{step:08d}.pt"
    message = str(info.value)
    assert f"validation after step {step} failed" in message and "bb" in message
    assert "points-val" in message and str(ckpt) in message and "--resume" in message
    assert load_checkpoint(ckpt)["pending_validation"] is True
    assert not (tmp_path / "run" / "model.safetensors").exists()

    train(cfg, task=PointTask(cfg), resume=True)
    assert load_checkpoint(ckpt)["pending_validation"] is False
    for name in ("iter_00000004.pt", "iter_00000006.pt", "iter_00000012.pt"):
        a, b = (load_checkpoint(d / "checkpoints" / name) for d in (tmp_path / "ref", tmp_path / "run"))
        assert a["best_metric"] == b["best_metric"] and a["pending_validation"] == b["pending_validation"]
    a, b = (load_file(d / "model.safetensors") for d in (tmp_path / "ref", tmp_path / "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_log, run_log = (read_jsonl(d / "metrics.jsonl") for d in (tmp_path / "ref", tmp_path / "run"))
    assert [r["step"] for r in ref_log if r["kind"] == "val"] == [4, 8, 12]
    assert _timeless(run_log) == _timeless(ref_log)


def test_the_video_task_evaluates_and_predicts_through_the_generic_entry_points(
    tmp_path, tiny_data, one_thread
):
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", train={"epochs": 1, "progress": False}))
    result = train(cfg)
    weights = tmp_path / "run" / "model.safetensors"
    assert evaluate(cfg, weights=weights).record["clip_top1"] == result.final_eval["clip_top1"]
    video = tiny_data["root"] / "videos" / sorted(p.name for p in (tiny_data["root"] / "videos").iterdir())[0]
    (prediction,) = predict(cfg, [video], weights=weights)
    assert prediction["path"] == str(video) and prediction["views"] == cfg.data.num_clips * cfg.data.num_crops
    assert sorted(t["label"] for t in prediction["top"]) == ["blue", "red"]
    assert abs(sum(t["probability"] for t in prediction["top"]) - 1.0) < 1e-4
