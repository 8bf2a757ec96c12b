"""The task interface: what the one training loop asks of a task (video classification today,
detection next), and the table that maps a config's ``task`` to its implementation.

Dependency direction: tasks build on the engine (``nonlocalnet.tasks.*`` imports the engine's
config, AMP and distributed helpers); the engine never imports a task module. It knows tasks by
name only: :data:`TASKS` maps ``cfg.task`` to ``"module:Class"``, imported when a run starts,
as a plugin table would. The loop (``engine/train.py``) keeps checkpoints, exact resume, DDP,
AMP, gradient accumulation, logging and bad-data accounting; a task supplies the model, the
data, the loss of a batch and the evaluation.

A task is any object with the members of :class:`Task` (a ``Protocol``: no base class needed).
A minimal one, for a model that regresses one number per sample::

    class Regression:
        label = "tiny regression"
        has_validation = True
        validation_files = ("val.npz",)
        train_metrics = ("mse",)

        def __init__(self, cfg, **options):
            self.cfg, self.train_set = cfg, MyDataset("train")

        def build_model(self):
            return nn.Linear(8, 1), "random initialisation"

        def train_loader(self, *, distributed, num_workers, epoch=0, start_batch=0):
            return build_loader(self.train_set, batch_size=self.cfg.train.batch_size,
                                shuffle=True, seed=self.cfg.seed, num_workers=num_workers,
                                distributed=distributed, drop_last=True,
                                start_batch=start_batch, epoch=epoch)

        def model_input(self, batch, device, memory_format):
            return batch.x.to(device)

        def example_input(self, device, memory_format):
            return torch.zeros(1, 8, device=device)

        def placeholder_loss(self, net, device, memory_format):
            return net(self.example_input(device, memory_format))

        def loss(self, net, batch, device, memory_format):
            out = net(self.model_input(batch, device, memory_format)).squeeze(1)
            err = (out.float() - batch.y.to(device)) ** 2
            return StepLoss(err.sum(), {"mse": err.sum().item()})

        def evaluate(self, model, ctx, *, memory_format):
            mse = ...  # over the validation set, gathered over ranks
            return Evaluation({"mse": mse}, metric=-mse, bad=[])

        def checkpoint_extras(self):
            return {}

        def write_run_files(self, folder):
            pass

    register_task("regression", "my_package.tasks:Regression")  # then ``task: regression``
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    from nonlocalnet.engine.config import Config
    from nonlocalnet.engine.distributed import DistContext

__all__ = ["TASKS", "Evaluation", "StepLoss", "Task", "build_task", "register_task"]

# ``cfg.task`` -> ``"module:Class"``; the class is called as ``Class(cfg, **options)``
TASKS: dict[str, str] = {
    "video_classification": "nonlocalnet.tasks.video:VideoClassification",
    "detection": "nonlocalnet.tasks.detection:Detection",
}


@dataclass
class StepLoss:
    """The loss of one micro-batch: ``loss`` summed over its samples (the engine divides by the
    nominal batch, so accumulation and broken samples keep the scale), and per-sample statistics
    summed over it (``{"top1": correct}``); the log shows each divided by the samples seen."""

    loss: Tensor
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """An evaluation, the same on every rank: ``record`` goes to the metrics log (kind
    ``val``), ``metric`` (higher is better) chooses ``best.pt``, ``bad`` lists the paths of the
    samples that could not be read."""

    record: dict[str, Any]
    metric: float
    bad: list[str] = field(default_factory=list)


@runtime_checkable
class Task(Protocol):
    """What the training loop needs from a task.

    Batches: ``len(batch)`` is the number of usable samples (0 when all were broken) and
    ``batch.bad`` lists the broken ones (:class:`nonlocalnet.data.BadSample`). The training
    loader follows :func:`nonlocalnet.data.build_loader`: ``loader.sampler.set_epoch(e)`` before
    each epoch, full batches only, ``start_batch`` batches of the first epoch skipped (exact
    resume), ``distributed=(rank, world)`` gives each rank its share.
    """

    label: str  # names the run in logs, figures and the weights' metadata
    has_validation: bool
    validation_files: tuple[str, ...]  # named when a validation fails (lists, annotation files)
    train_metrics: tuple[str, ...]  # the keys of every StepLoss.sums, in log order
    train_set: torch.utils.data.Dataset  # the training samples (``len``: how many)

    def build_model(self) -> tuple[nn.Module, str]:
        """The model with its initial weights, and a one-line report of where they came from."""
        ...

    def train_loader(
        self, *, distributed: tuple[int, int] | None, num_workers: int, epoch: int = 0, start_batch: int = 0
    ) -> torch.utils.data.DataLoader: ...

    def model_input(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        """The model's input for a batch, on ``device`` (also used to re-estimate BN statistics)."""
        ...

    def example_input(self, device: torch.device, memory_format: torch.memory_format) -> Tensor:
        """One all-zero sample as the model takes it: times memory formats (as random data of
        its shape)."""
        ...

    def placeholder_loss(
        self, net: nn.Module, device: torch.device, memory_format: torch.memory_format
    ) -> Tensor:
        """A forward of ``net`` on a stand-in sample (e.g. ``net(example_input(...))``; with
        targets, for models whose training forward needs them), reaching every trainable
        parameter. A rank whose micro-batch holds only broken samples multiplies it by zero and
        back-propagates, so it joins the gradient all-reduce with a zero gradient."""
        ...

    def loss(
        self, net: nn.Module, batch: Any, device: torch.device, memory_format: torch.memory_format
    ) -> StepLoss:
        """Forward ``batch`` (with at least one sample) through ``net``; run under autocast."""
        ...

    def evaluate(
        self, model: nn.Module, ctx: DistContext, *, memory_format: torch.memory_format
    ) -> Evaluation:
        """Evaluate ``model`` on the validation data (every rank takes part)."""
        ...

    def checkpoint_extras(self) -> dict[str, Any]:
        """Plain data stored in every checkpoint (e.g. ``class_names``)."""
        ...

    def write_run_files(self, folder: Path) -> None:
        """Files the run folder holds besides the engine's (e.g. ``classes.txt``)."""
        ...

    # Optional: ``sample_noun`` (``"image"``), what a sample is in bad-data messages ("video"
    # without it).


def register_task(name: str, target: str) -> None:
    """Make ``task: name`` in a config build ``target`` (``"module:Class"``)."""
    if ":" not in target:
        raise InvalidValueError(f"task target must be 'module:Class', got {target!r}")
    TASKS[name] = target


def build_task(cfg: Config, **options: Any) -> Task:
    """The task ``cfg.task`` names, built from ``cfg`` (``options``: e.g. a shared frame cache)."""
    from nonlocalnet.engine.config import ConfigError

    if cfg.task not in TASKS:
        raise ConfigError(f"task: {cfg.task!r} is not one of {sorted(TASKS)}")
    module, _, name = TASKS[cfg.task].partition(":")
    task = getattr(importlib.import_module(module), name)(cfg, **options)
    if not isinstance(task, Task):
        missing = [m for m in _MEMBERS if not hasattr(task, m)]
        raise InvalidTypeError(f"task {cfg.task!r} ({TASKS[cfg.task]}) lacks {missing}")
    return task


_MEMBERS = (
    "label",
    "has_validation",
    "validation_files",
    "train_metrics",
    "train_set",
    "build_model",
    "train_loader",
    "model_input",
    "example_input",
    "placeholder_loss",
    "loss",
    "evaluate",
    "checkpoint_extras",
    "write_run_files",
)
