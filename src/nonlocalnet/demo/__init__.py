"""``nonlocalnet demo``: a built-in long-range video task on which non-local blocks matter. Its
recipes are config files (:mod:`nonlocalnet.demo.recipe`, ``nonlocalnet/demo/recipes/``)."""

from nonlocalnet.demo.models import ABLATIONS, DEMO_MODELS, QUICK_MODELS, DemoModel, model_section
from nonlocalnet.demo.recipe import (
    DetectionDemoConfig,
    VideoDemoConfig,
    VideoDemoSection,
    detection_recipe,
    run_config,
    video_recipe,
)
from nonlocalnet.demo.run import DemoResult, demo_config, run_demo

__all__ = [
    "ABLATIONS",
    "DEMO_MODELS",
    "QUICK_MODELS",
    "DemoModel",
    "DemoResult",
    "DetectionDemoConfig",
    "VideoDemoConfig",
    "VideoDemoSection",
    "demo_config",
    "detection_recipe",
    "model_section",
    "run_config",
    "run_demo",
    "video_recipe",
]
