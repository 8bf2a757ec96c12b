"""The video task's inference: one video's top-k labels over the test views, and pooled-feature
extraction; the network of a weights file (training checkpoint, a run's ``model.safetensors``,
converted weights) for ``nonlocalnet predict`` and ``nonlocalnet eval``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from nonlocalnet.data import probe_video, read_class_names, read_frames, test_clip_indices, test_views
from nonlocalnet.engine.config import ConfigError, apply_overrides
from nonlocalnet.engine.task import config_from_dict, load_config
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import VideoResNet, caffe2_norm, check_model_matches, list_models, model_info
from nonlocalnet.models.model_file import ModelFile, load_model_file, read_model_file
from nonlocalnet.tasks.video.config import CONFIG_KEYS, VideoConfig
from nonlocalnet.tasks.video.setup import build_model_from_config

__all__ = ["Prediction", "inference_config", "load_model_weights", "load_trained_model", "predict_video"]


@dataclass
class Prediction:
    """Top-k ``(class name, probability)`` for one video (softmax averaged over ``views``), and
    the pooled res5 features averaged over the views when requested."""

    path: str
    top: list[tuple[str, float]]
    views: int
    features: Tensor | None = None


def load_trained_model(
    path: str | os.PathLike | ModelFile,
    device: str | torch.device = "cpu",
    *,
    config: str | os.PathLike | None = None,
    model: str | None = None,
    class_names: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> tuple[VideoResNet, VideoConfig, list[str]]:
    """The network of a weights file, loaded, with the config that tests it and the class names.

    ``path``: a training checkpoint, a run's ``model.safetensors``, converted weights
    (``convert-caffe2``) or the authors' ``.pkl``; the config comes from
    :func:`inference_config` (``config``, ``model``, ``overrides``). Class names: the
    ``class_names`` file, else the checkpoint's, else the ``classes.txt`` next to the weights (a
    run folder), else ``data.class_names``, else ``0 .. num_classes - 1``."""
    weights = path if isinstance(path, ModelFile) else read_model_file(path)
    cfg = inference_config(weights, config=config, model=model, overrides=overrides)
    net = build_model_from_config(cfg.model)
    load_model_weights(net, weights, cfg)
    net.to(device).eval()
    return net, cfg, _class_names(weights, cfg, class_names)


def inference_config(
    weights: ModelFile,
    *,
    config: str | os.PathLike | None = None,
    model: str | None = None,
    overrides: Sequence[str] = (),
) -> VideoConfig:
    """The config that builds the network of ``weights`` and tests it, from the first of:

    * ``config``: a YAML config (``nonlocalnet eval/predict --config``);
    * ``model``: a registry name (``--model``), for weights without a config: the paper's test
      protocol (10 clips x 3 crops, short side 256) at the model's frame geometry,
      ``num_classes`` from the weights' classifier, ``variant`` and ``norm`` from the file
      (the authors' weights, :attr:`ModelFile.released`: a ``.pkl`` or ``convert-caffe2``
      output; else ``paper`` and the form of its normalisation weights, BN statistics or not);
    * the config a training checkpoint holds;
    * the authors' weights known by their name or metadata: as with ``model``, their model;
    * the ``config.yaml`` of the run folder the weights lie in (a run's ``model.safetensors``).

    ``overrides`` (``section.key=value``) apply on top. ``model.init`` is set to ``none`` (the
    weights are loaded afterwards). Weights that determine no model are a :class:`ConfigError`
    that names the flag to pass."""
    if config is not None and model is not None:
        raise ConfigError("give the config (--config) or a registry model name (--model), not both")
    where = weights.path
    released = weights.released
    if config is not None:
        cfg = load_config(config, list(overrides))
    else:
        if model is not None:
            data = _registry_config(weights, model)
        elif weights.config is not None:
            data = _saved_config(weights.config)
        elif released is not None:
            data = _registry_config(weights, released.model)
        elif weights.kind != "caffe2" and (where.parent / "config.yaml").is_file():
            data = _read_run_config(where.parent / "config.yaml")
        else:
            named = (weights.metadata or {}).get("model")
            hint = f"; its metadata names {named!r}: --model {named}" if named in list_models("video") else ""
            where_config = (
                "not a released file name" if weights.kind == "caffe2" else "no config.yaml next to it"
            )
            raise ConfigError(
                f"{where} holds weights without a config (a {weights.kind} file, {where_config}): pass "
                "--config CFG (the YAML config the model was trained with) or --model NAME (a registry "
                f"name, `nonlocalnet models`){hint}"
            )
        cfg = config_from_dict(apply_overrides(data, list(overrides)))
    if not isinstance(cfg, VideoConfig):
        raise ConfigError(
            f"{where}: its config is a {cfg.task!r} config; predict and eval take video classifiers "
            "(detectors: nonlocalnet detect-predict, detect-eval)"
        )
    cfg.model.init, cfg.model.init_path = "none", None
    return cfg


def _registry_config(weights: ModelFile, name: str) -> dict[str, Any]:
    """The config dict of registry model ``name`` for ``weights`` (see :func:`inference_config`)."""
    info = model_info(name, "video")  # an unknown name: an error with the close names
    released, caffe2 = weights.released, weights.kind == "caffe2"
    named = released.model if released is not None else (weights.metadata or {}).get("model")
    if named in list_models("video") and named != name:
        how = "by its file name" if caffe2 else "by its metadata"
        raise ConfigError(
            f"{weights.path} holds the weights of {named} ({how}), not of {name}: pass --model {named}"
        )
    fc = weights.state.get("pred_w" if caffe2 else "fc.weight")
    if fc is None or len(fc.shape) != 2:
        raise ConfigError(
            f"{weights.path} has no classifier weight ({'pred_w' if caffe2 else 'fc.weight'}): not the "
            "weights of a video classifier of this library or of the authors' code"
        )
    frames: int | None  # a video model's clip: its ModelInfo always has one
    rate: int | None
    if released is not None:
        variant, norm, frames, rate = (
            "released",
            released.backbone_norm,
            released.frames,
            released.sample_rate,
        )
    elif caffe2:
        variant, norm, frames, rate = "released", caffe2_norm(weights.state), info.frames, info.sample_rate
    else:
        norm = "batchnorm" if "bn1.running_var" in weights.state else "affine"
        variant, frames, rate = "paper", info.frames, info.sample_rate
    return {
        "model": {"name": name, "num_classes": int(fc.shape[0]), "variant": variant, "backbone_norm": norm},
        "data": {"clip_length": frames, "stride": rate},
    }


def _saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    saved = dict(saved)
    train = saved.get("train")
    if isinstance(train, dict) and train.get("iterations") and train.get("epochs"):
        # written before both were refused; such a run went by iterations
        saved["train"] = {**train, "epochs": 0}
    return saved


def _read_run_config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a nonlocalnet config (a YAML mapping expected)")
    return data


def load_model_weights(net: nn.Module, weights: ModelFile, cfg: VideoConfig) -> str:
    """Load ``weights`` into ``net`` (built from ``cfg.model``) with
    :func:`~nonlocalnet.models.model_file.load_model_file`; returns its one-line report.
    Weights made for another network are a :class:`ConfigError` naming the difference: for the
    authors' weights, each ``model.*`` setting that differs; for a state dict, the missing,
    unexpected and reshaped keys."""
    released = weights.released  # the authors' weights: the whole network is checked first
    if released is not None and isinstance(net, VideoResNet):
        check_model_matches(net, released, source=weights.path.name, keys=CONFIG_KEYS)
    if weights.kind != "caffe2":
        _check_fits(net, weights, cfg)
    return load_model_file(net, weights, keys=CONFIG_KEYS)


def _check_fits(net: nn.Module, weights: ModelFile, cfg: VideoConfig) -> None:
    m = cfg.model
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights.state]
    unexpected = [k for k in weights.state if k not in expected]
    reshaped = [
        f"{k} {tuple(weights.state[k].shape)} (the model's {tuple(expected[k].shape)})"
        for k in expected
        if k in weights.state and tuple(weights.state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(found)} {what} (e.g. {', '.join(found[:3])})"
            for what, found in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", reshaped),
            )
            if found
        ]
        raise ConfigError(
            f"{weights.path} does not fit the model the config builds ({m.name or 'custom spec'}, variant "
            f"{m.variant}, {m.num_classes} classes): {'; '.join(parts)} keys. Pass the config the weights "
            "were made with (--config), or --model NAME for converted weights"
        )


def _class_names(weights: ModelFile, cfg: VideoConfig, given: str | os.PathLike | None) -> list[str]:
    """The class names of the model (see :func:`load_trained_model`), checked against its classes."""
    n = cfg.model.num_classes
    numbered = [str(i) for i in range(n)]
    beside = weights.path.parent / "classes.txt"
    if given is not None:
        names, source = read_class_names(given), f"the class names file {given}"
    elif weights.class_names and list(weights.class_names) != numbered:
        names, source = list(weights.class_names), str(weights.path)
    elif weights.kind != "checkpoint" and beside.is_file():
        names, source = read_class_names(beside), str(beside)
    elif cfg.data.class_names and Path(cfg.data.class_names).is_file():
        names, source = read_class_names(cfg.data.class_names), f"data.class_names {cfg.data.class_names}"
    else:
        return numbered
    if len(names) != n:
        raise ConfigError(f"{source} lists {len(names)} class names; the model has {n} classes")
    return names


@torch.no_grad()
def predict_video(
    model: VideoResNet,
    path: str | Path,
    cfg: VideoConfig,
    class_names: list[str],
    *,
    topk: int = 5,
    features: bool = False,
) -> Prediction:
    """Decode ``num_clips`` clips evenly spaced in time, ``num_crops`` crops each (the test
    protocol of ``cfg.data``), and average the fully convolutional softmax over all views. Frames
    are turned upright and resampled to square pixels as ``cfg.data.autorotate`` and
    ``cfg.data.square_pixels`` say (as in training)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise InvalidValueError(f"topk must be a positive int, got {topk!r}")
    d = cfg.data
    info = probe_video(path, exact=True)  # a true frame count (headers can over-count)
    transform = d.transform()
    device = next(model.parameters()).device
    window = model.res5_size(d.crop)
    model.eval()
    probs, feats = [], []
    for indices in test_clip_indices(info.num_frames, d.clip_length, d.stride, d.num_clips):
        frames = read_frames(path, indices, info=info, autorotate=d.autorotate, square_pixels=d.square_pixels)
        views = test_views(frames, transform).to(device)
        probs.append(model.fully_convolutional_scores(views, window).float().cpu())
        if features:
            feats.append(model.pooled_features(views).float().cpu())
    mean = torch.cat(probs).mean(0)
    k = min(topk, len(class_names))
    values, labels = mean.topk(k)
    top = [(class_names[i], float(v)) for v, i in zip(values, labels.tolist(), strict=True)]
    pooled = torch.cat(feats).mean(0) if features else None
    return Prediction(str(path), top, views=sum(len(p) for p in probs), features=pooled)
