"""Configuration machinery: typed dataclasses, YAML files, ``key=value`` overrides.

A config file is YAML with sections; every key is checked (unknown keys and wrong types are
errors naming the key). ``base: other.yaml`` inherits from another file (relative to the file),
so one recipe file can serve every model. The engine defines the sections every task shares
(:class:`Config`); a task subclasses it with its own sections (``nonlocalnet.tasks``), and
:func:`config_from_dict` builds the class of the config's ``task``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from nonlocalnet.atomic import atomic_write_bytes
from nonlocalnet.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "check_config",
    "coerce",
    "config_to_dict",
    "read_config_data",
    "save_config",
]


log = logging.getLogger("nonlocalnet.config")


class ConfigError(InvalidValueError):
    """A config file or override is wrong; the message names the key."""


@dataclass
class DataConfig:
    """The loop's data settings: ``num_workers`` loader processes; more than
    ``bad_data_threshold`` (a fraction) of unreadable samples stops the run."""

    num_workers: int = 4
    bad_data_threshold: float = 0.01

    def validate(self) -> None:
        if not 0.0 <= self.bad_data_threshold <= 1.0:
            raise ConfigError(f"data.bad_data_threshold must be in [0, 1], got {self.bad_data_threshold}")


@dataclass
class OptimConfig:
    """SGD with (Nesterov) momentum; lr scaled linearly with the total batch; step schedule as
    fractions of the iterations (150k and 300k of 400k in the paper); linear warm-up.
    ``nonlocal_lr_mult`` multiplies the non-local blocks' learning rate (1 in the paper; a block
    that starts as the identity leaves it sooner with more)."""

    base_lr: float = 0.01
    base_batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    lr_milestones: list = field(default_factory=lambda: [0.375, 0.75])
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    nonlocal_lr_mult: float = 1.0

    def validate(self) -> None:
        if any(not isinstance(m, int | float) or not 0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"optim.lr_milestones: expected fractions in (0, 1), got {self.lr_milestones}")


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is per process; an optimiser step sees
    ``batch_size * grad_accum * world_size`` samples. Give ``iterations`` (optimiser steps) or
    ``epochs``, not both (an override of one replaces the config file's other). ``amp``:
    ``none``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA). ``memory_format``: the task's choice
    (``contiguous``; ``channels_last`` or ``auto``, timed, where the task supports them)."""

    batch_size: int = 8
    grad_accum: int = 1
    iterations: int = 0
    epochs: int = 0
    amp: str = "none"
    precise_bn_batches: int = 0
    memory_format: str = "contiguous"
    log_every: int = 20
    progress: bool = True
    sync_bn: bool = False
    deterministic: bool = False
    dist_timeout_s: float = 300.0

    def validate(self) -> None:
        if self.iterations < 0 or self.epochs < 0:
            raise ConfigError("train.iterations and train.epochs must be >= 0")
        if self.iterations and self.epochs:
            raise ConfigError(
                f"train.iterations ({self.iterations}) and train.epochs ({self.epochs}) are both "
                "set: give only one (an override of one on the command line replaces the file's other)"
            )


@dataclass
class CheckpointConfig:
    """Checkpoints every ``every_iters`` steps (0: at the end of each epoch only), the last
    ``keep_last`` kept, plus ``best.pt`` by the task's validation metric."""

    every_iters: int = 0
    keep_last: int = 3
    keep_best: bool = True


@dataclass
class EvalConfig:
    """Validation during training every ``every_epochs`` epochs (0: only at the end), in
    batches of ``batch_size`` samples."""

    every_epochs: int = 1
    batch_size: int = 4


@dataclass
class Config:
    """The settings every task shares. ``output_dir`` holds the resolved config, checkpoints,
    logs and figures; ``task`` chooses what is trained (a task's config class subclasses this
    one with its own sections: ``nonlocalnet.tasks``).

    Checks: a section may define ``validate(self)`` (called after parsing, errors naming the
    key); the class tables below list the keys (``section.key``) whose values are limited, and a
    task's subclass extends them."""

    task: str = "video_classification"
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "train.amp": ("none", "bf16", "fp16"),
        "train.memory_format": ("contiguous", "channels_last", "auto"),
    }
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {"optim.base_batch_size", "train.batch_size", "train.grad_accum", "train.log_every",
         "checkpoint.keep_last", "eval.batch_size"}
    )  # fmt: skip
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "data.num_workers",
            "optim.base_lr",  # 0: a frozen run (tests, BN statistics only)
            "optim.lr_gamma",
            "optim.momentum",
            "optim.weight_decay",
            "optim.weight_decay_norm",
            "optim.warmup_iters",
            "optim.warmup_factor",
            "optim.nonlocal_lr_mult",  # 0: the blocks stay as they are (identity at init)
            "train.precise_bn_batches",
            "checkpoint.every_iters",
            "eval.every_epochs",
        }
    )
    ABOVE_ZERO: ClassVar[frozenset[str]] = frozenset({"train.dist_timeout_s"})

    def complete(self, data: Mapping[str, Any]) -> None:
        """Settings that depend on which keys ``data`` (the parsed mapping) gave; run before
        the checks. None here."""

    def validate(self) -> None:
        """Check every section that defines ``validate``; a subclass adds checks across them."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            check = getattr(section, "validate", None)
            if dataclasses.is_dataclass(section) and callable(check):
                check()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats, nothing else.
    A mismatch is a :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _check_value(full: str, value: Any, rules: type[Config]) -> None:
    """The limits the config class ``rules`` sets on ``full`` (``section.key``)."""
    if full in rules.CHOICES and value not in rules.CHOICES[full]:
        raise ConfigError(f"{full}: {value!r} is not one of {rules.CHOICES[full]}")
    if full in rules.POSITIVE and value < 1:
        raise ConfigError(f"{full}: must be >= 1, got {value!r}")
    if full in rules.NON_NEGATIVE and not value >= 0:  # NaN too
        raise ConfigError(f"{full}: must be >= 0, got {value!r}")
    if full in rules.ABOVE_ZERO and not value > 0:  # NaN too
        raise ConfigError(f"{full}: must be > 0, got {value!r}")


def _fill(obj: Any, data: dict, prefix: str, rules: type[Config]) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys here: {names}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of settings, got {value!r}")
            _fill(current, value, f"{full}.", rules)
            continue
        value = coerce(full, value, hints[key])
        _check_value(full, value, rules)
        setattr(obj, key, value)


def check_config(cfg: Any, call: str, cls: type[Config] = Config) -> None:
    """Raise ``TypeError`` unless ``cfg`` is a ``cls`` (a task's config class, or any
    :class:`Config`; ``call`` shows the signature), then run its checks (``cfg.validate()``:
    settings changed after parsing are checked too)."""
    if not isinstance(cfg, cls):
        kind = "" if cls is Config else f"a {cls.__name__}; "
        raise InvalidTypeError(
            f"{call}: cfg must be a Config ({kind}from load_config(path) or config_from_dict(data)), "
            f"got {type(cfg).__name__}"
        )
    cfg.validate()


def build_config(data: dict, cls: type[Config]) -> Config:
    """Build and validate a ``cls`` (a task's config class) from nested plain data; the task
    registry (:func:`nonlocalnet.engine.task.config_from_dict`) chooses ``cls`` by ``task``."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = cls()
    _fill(cfg, data, "", cls)
    cfg.complete(data)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join(map(str, (*seen, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _merge(_read_yaml((path.parent / base).resolve(), (*seen, path)), data)
    # a file that gives the run's length in epochs replaces its base's iterations (and the
    # other way round), as a command-line override does
    for section, key in _EXCLUSIVE:
        mine = data.get(section)
        if not isinstance(mine, dict) or mine.get(key) in (0, None, False):
            continue
        for other_section, other in _EXCLUSIVE:
            if other_section == section and other != key and other not in mine and merged[section].get(other):
                merged[section][other] = 0
    return merged


# settings of which only one may be non-zero: an override of one resets the others of ``data``
_EXCLUSIVE = (("train", "iterations"), ("train", "epochs"))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to nested plain data.

    The length of a run is given once: a non-zero ``train.epochs`` override resets the
    ``train.iterations`` of ``data`` to 0, and the other way round (the command line wins over
    the file); both overridden non-zero is an error when the config is validated."""
    out = _merge({}, data)
    given: dict[tuple[str, ...], Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
        given[tuple(parts)] = value
    for pair in _EXCLUSIVE:
        if given.get(pair, 0) in (0, None, False):
            continue
        section = out.get(pair[0])
        for other in _EXCLUSIVE:
            if other != pair and other not in given and isinstance(section, dict) and section.get(other[1]):
                log.info(
                    "%s=%r on the command line replaces %s=%r of the config",
                    ".".join(pair),
                    given[pair],
                    ".".join(other),
                    section[other[1]],
                )
                section[other[1]] = 0
    return out


def read_config_data(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict:
    """The plain data of a YAML config (following ``base:``) with ``overrides`` applied."""
    data = _read_yaml(Path(path).resolve()) if path is not None else {}
    return apply_overrides(data, overrides or [])


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode())
