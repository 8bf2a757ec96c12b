"""The package's public entry points name a wrong argument's type."""

import pytest
from torch import nn

from nonlocalnet import add_nonlocal
from nonlocalnet.engine import train
from nonlocalnet.errors import InvalidTypeError
from nonlocalnet.models import save_weights
from nonlocalnet.tasks.video import run_evaluation


def test_api_entry_points_name_a_wrong_argument_type(tmp_path):
    """``train("configs/x.yaml")`` (a newcomer's first try) was "AttributeError: 'str' object has
    no attribute 'device'"; ``save_weights(path, model)`` "'str' object has no attribute
    'items'"; ``add_nonlocal(None, ...)`` "'NoneType' object has no attribute 'named_modules'"."""
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
