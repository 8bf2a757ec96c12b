"""``nonlocalnet demo``: a built-in long-range video task on which non-local blocks matter."""

from nonlocalnet.demo.models import ABLATIONS, DEMO_MODELS, QUICK_MODELS, DemoModel, model_section
from nonlocalnet.demo.recipe import DemoRecipe, full_recipe, quick_recipe
from nonlocalnet.demo.run import DemoResult, demo_config, run_demo

__all__ = [
    "ABLATIONS",
    "DEMO_MODELS",
    "QUICK_MODELS",
    "DemoModel",
    "DemoRecipe",
    "DemoResult",
    "demo_config",
    "full_recipe",
    "model_section",
    "quick_recipe",
    "run_demo",
]
