"""Single-video inference: top-k labels over the test views, and pooled-feature extraction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nonlocalnet.data import probe_video, read_frames, test_clip_indices, test_views
from nonlocalnet.engine.config import Config, config_from_dict
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.engine.setup import build_model_from_config
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import VideoResNet

__all__ = ["Prediction", "load_trained_model", "predict_video"]


@dataclass
class Prediction:
    """Top-k ``(class name, probability)`` for one video (softmax averaged over ``views``), and
    the pooled res5 features averaged over the views when requested."""

    path: str
    top: list[tuple[str, float]]
    views: int
    features: Tensor | None = None


def load_trained_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[VideoResNet, Config, list[str]]:
    """Rebuild the model, its config and class names from a training checkpoint."""
    weights = read_model_file(checkpoint)
    if weights.config is None:
        raise InvalidValueError(
            f"{checkpoint} has no config; it is not a nonlocalnet training checkpoint ({weights.kind} file)"
        )
    saved = dict(weights.config)
    train = saved.get("train")
    if isinstance(train, dict) and train.get("iterations") and train.get("epochs"):
        # written before both were refused; such a run went by iterations
        saved["train"] = {**train, "epochs": 0}
    cfg = config_from_dict(saved)
    cfg.model.init = "none"
    cfg.model.init_path = None
    model = build_model_from_config(cfg.model)
    model.load_state_dict(weights.state)
    model.to(device).eval()
    names = weights.class_names or [str(i) for i in range(cfg.model.num_classes)]
    return model, cfg, list(names)


@torch.no_grad()
def predict_video(
    model: VideoResNet,
    path: str | Path,
    cfg: Config,
    class_names: list[str],
    *,
    topk: int = 5,
    features: bool = False,
) -> Prediction:
    """Decode ``num_clips`` clips evenly spaced in time, ``num_crops`` crops each (the test
    protocol of ``cfg.data``), and average the fully convolutional softmax over all views."""
    from nonlocalnet.data.transforms import TransformConfig

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise InvalidValueError(f"topk must be a positive int, got {topk!r}")
    d = cfg.data
    info = probe_video(path, exact=True)  # a true frame count (headers can over-count)
    transform = TransformConfig(
        test_short=d.test_short,
        test_crop=d.test_crop,
        num_crops=d.num_crops,
        mean=tuple(d.mean),
        std=tuple(d.std),
    )
    device = next(model.parameters()).device
    window = model.res5_size(d.crop)
    model.eval()
    probs, feats = [], []
    for indices in test_clip_indices(info.num_frames, d.clip_length, d.stride, d.num_clips):
        views = test_views(read_frames(path, indices, info=info), transform).to(device)
        probs.append(model.fully_convolutional_scores(views, window).float().cpu())
        if features:
            feats.append(model.pooled_features(views).float().cpu())
    mean = torch.cat(probs).mean(0)
    k = min(topk, len(class_names))
    values, labels = mean.topk(k)
    top = [(class_names[i], float(v)) for v, i in zip(values, labels.tolist(), strict=True)]
    pooled = torch.cat(feats).mean(0) if features else None
    return Prediction(str(path), top, views=sum(len(p) for p in probs), features=pooled)
