"""The task interface: what the one training loop, evaluation and prediction ask of a task, and
the registry that maps a config's ``task`` to a task class and its config class.

Dependency direction: tasks build on the engine (``nonlocalnet.tasks`` imports the engine's
config, AMP and distributed helpers and registers its tasks when imported); the engine never
imports a task. The loop (:mod:`nonlocalnet.engine.trainer`) keeps checkpoints, exact resume,
DDP, AMP, gradient accumulation, logging and bad-data accounting; a task supplies the model,
the data, the loss of a batch, the evaluation and the prediction.

A task is any object with the members of :class:`Task` (a ``Protocol``: no base class needed).
A minimal one, for a model that regresses one number per sample (``MyConfig``: a subclass of
:class:`~nonlocalnet.engine.config.Config` with the task's own sections, if it has any)::

    class Regression:
        label = "tiny regression"
        sample_noun = "sample"
        resume_free_settings = ()
        has_validation = True
        validation_files = ("val.npz",)
        train_metrics = ("mse",)

        def __init__(self, cfg):
            self.cfg, self.train_set = cfg, MyDataset("train")  # items with len() and .bad

        def build_model(self):
            return nn.Linear(8, 1), "random initialisation"

        def train_loader(self, *, distributed, num_workers, epoch=0, start_batch=0):
            return build_loader(self.train_set, batch_size=self.cfg.train.batch_size,
                                shuffle=True, seed=self.cfg.seed, num_workers=num_workers,
                                distributed=distributed, drop_last=True,
                                start_batch=start_batch, epoch=epoch)

        def set_epoch(self, loader, epoch):
            loader.sampler.set_epoch(epoch)

        def memory_format(self, model, device):
            return torch.contiguous_format

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

        def load_weights(self, model, path):
            model.load_state_dict(load_checkpoint(path)["model"])
            return f"weights of {path}"

        def predict(self, model, inputs, *, device):
            with torch.no_grad():
                return [{"value": model(x.to(device)).item()} for x in inputs]

    register_task("regression", Regression, MyConfig)  # then ``task: regression`` in a config
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from nonlocalnet.engine.config import Config, ConfigError, build_config, read_config_data
from nonlocalnet.errors import InvalidTypeError

if TYPE_CHECKING:
    from nonlocalnet.engine.distributed import DistContext

__all__ = [
    "TASKS",
    "Evaluation",
    "StepLoss",
    "Task",
    "TaskEntry",
    "build_task",
    "config_from_dict",
    "load_config",
    "register_task",
]


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
    """What the training loop, :func:`~nonlocalnet.engine.inference.evaluate` and
    :func:`~nonlocalnet.engine.inference.predict` need from a task.

    Batches: ``len(batch)`` is the number of usable samples (0 when all were broken) and
    ``batch.bad`` lists the broken ones (:class:`nonlocalnet.data.BadSample`). The training
    loader follows :func:`nonlocalnet.data.build_loader`: :meth:`set_epoch` before each epoch,
    full batches only, ``start_batch`` batches of the first epoch skipped (exact resume),
    ``distributed=(rank, world)`` gives each rank its share.
    """

    # read-only members (class attributes, instance attributes or properties)
    @property
    def label(self) -> str:
        """Names the run in logs, figures and the weights' metadata."""
        ...

    @property
    def sample_noun(self) -> str:
        """What a sample is, in bad-data messages (a noun: ``"sample"``)."""
        ...

    @property
    def resume_free_settings(self) -> tuple[str, ...]:
        """Settings of the task's sections a resume may change (evaluation data, initial
        weights, ...)."""
        ...

    @property
    def has_validation(self) -> bool: ...

    @property
    def validation_files(self) -> tuple[str, ...]:
        """Named when a validation fails (lists, annotation files)."""
        ...

    @property
    def train_metrics(self) -> tuple[str, ...]:
        """The keys of every :attr:`StepLoss.sums`, in log order."""
        ...

    @property
    def train_set(self) -> Sized:
        """The training samples (a dataset; ``len``: how many)."""
        ...

    def build_model(self) -> tuple[nn.Module, str]:
        """The model with its initial weights, and a one-line report of where they came from."""
        ...

    def train_loader(
        self, *, distributed: tuple[int, int] | None, num_workers: int, epoch: int = 0, start_batch: int = 0
    ) -> torch.utils.data.DataLoader: ...

    def set_epoch(self, loader: torch.utils.data.DataLoader, epoch: int) -> None:
        """Make ``loader`` (one of :meth:`train_loader`'s) give the samples of ``epoch``."""
        ...

    def memory_format(self, model: nn.Module, device: torch.device) -> torch.memory_format:
        """The memory format the model (already on ``device``) trains and evaluates in,
        converting it if need be (e.g. from ``cfg.train.memory_format``)."""
        ...

    def model_input(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        """The model's input for a batch, on ``device`` (also used to re-estimate BN statistics)."""
        ...

    def example_input(self, device: torch.device, memory_format: torch.memory_format) -> Any:
        """One all-zero sample as the model takes it."""
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

    def load_weights(self, model: nn.Module, path: str | Path) -> str:
        """Load a weights or checkpoint file into ``model`` (one of :meth:`build_model`'s);
        returns a one-line report of what was loaded."""
        ...

    def predict(
        self, model: nn.Module, inputs: Sequence[Any], *, device: torch.device
    ) -> list[dict[str, Any]]:
        """The predictions of ``model`` (on ``device``, in eval mode) for ``inputs`` (e.g. file
        paths), one JSON-able dict per input."""
        ...


class TaskEntry(NamedTuple):
    """A registered task: its class (called as ``task_class(cfg, **options)``) and the config
    class its configs are read into."""

    task_class: type
    config_class: type[Config]


TASKS: dict[str, TaskEntry] = {}
"""``cfg.task`` -> the registered task (:func:`register_task`); ``nonlocalnet.tasks`` registers
the built-in ones when imported."""


def register_task(name: str, task_class: type, config_class: type[Config]) -> None:
    """Make ``task: name`` in a config read the config as ``config_class`` and train
    ``task_class`` (built as ``task_class(cfg, **options)``)."""
    if not isinstance(task_class, type):
        raise InvalidTypeError(f"register_task({name!r}): task_class must be a class, got {task_class!r}")
    if not (isinstance(config_class, type) and issubclass(config_class, Config)):
        raise InvalidTypeError(
            f"register_task({name!r}): config_class must be a subclass of nonlocalnet.engine.Config, "
            f"got {config_class!r}"
        )
    TASKS[name] = TaskEntry(task_class, config_class)


def build_task(cfg: Config, **options: Any) -> Task:
    """The task ``cfg.task`` names, built as ``task_class(cfg, **options)``."""
    task_class = _entry(cfg.task).task_class
    task = task_class(cfg, **options)
    if not isinstance(task, Task):
        missing = [m for m in _MEMBERS if not hasattr(task, m)]
        raise InvalidTypeError(f"task {cfg.task!r} ({task_class.__qualname__}) lacks {missing}")
    return task


def _entry(name: str) -> TaskEntry:
    if name not in TASKS:
        raise ConfigError(
            f"task: {name!r} is not one of {sorted(TASKS)} (the registered tasks: import "
            "nonlocalnet.tasks, or the package of your task, to register it)"
        )
    return TASKS[name]


def config_from_dict(data: dict) -> Config:
    """Build and validate the config of ``data``'s task (``task``, default :attr:`Config.task`)
    as the class that task registered."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    task = data.get("task", Config.task)
    if not isinstance(task, str):
        raise ConfigError(f"task: expected str, got {type(task).__name__} {task!r}")
    return build_config(data, _entry(task).config_class)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (following ``base:``), apply ``overrides`` (``section.key=value``),
    and build it as its task's config class."""
    return config_from_dict(read_config_data(path, overrides))


_MEMBERS = (
    "label",
    "sample_noun",
    "resume_free_settings",
    "has_validation",
    "validation_files",
    "train_metrics",
    "train_set",
    "build_model",
    "train_loader",
    "set_epoch",
    "memory_format",
    "model_input",
    "example_input",
    "placeholder_loss",
    "loss",
    "evaluate",
    "checkpoint_extras",
    "write_run_files",
    "load_weights",
    "predict",
)
