"""The demo's networks: one small C2D, the same with a non-local block for each of the four
instantiations, and a small I3D with and without the block; all described as config data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nonlocalnet.demo.recipe import VideoDemoSection
from nonlocalnet.layers import NonLocalOptions
from nonlocalnet.ops import SOFTMAX_MODES

__all__ = ["ABLATIONS", "DEMO_MODELS", "QUICK_MODELS", "DemoModel", "model_section"]


_STAGES = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class DemoModel:
    """A row of the demo's table: ``arch`` ``c2d`` or ``i3d``; ``mode`` the non-local
    instantiation, or ``None`` for the baseline without a block; ``after`` the stages (0 = res2,
    1 = res3, ...) whose block is followed by a non-local block; ``attend`` the block's keys
    (``spacetime``, ``space`` or ``time``)."""

    key: str
    label: str
    arch: str
    mode: str | None
    after: tuple[int, ...] = (2,)
    attend: str = "spacetime"

    @property
    def num_nonlocal(self) -> int:
        return 0 if self.mode is None else len(self.after)

    @property
    def placement(self) -> str:
        """Where the blocks are, for tables: ``"res3"``, ``"res3+res4"``, ``"-"``."""
        return "-" if self.mode is None else "+".join(_STAGES[i] for i in self.after)


DEMO_MODELS = (
    DemoModel("c2d", "C2D baseline", "c2d", None),
    DemoModel("c2d_nl_gaussian", "C2D + NL, Gaussian", "c2d", "gaussian"),
    DemoModel("c2d_nl_embedded", "C2D + NL, embedded Gaussian", "c2d", "embedded_gaussian"),
    DemoModel("c2d_nl_dot", "C2D + NL, dot product", "c2d", "dot_product"),
    DemoModel("c2d_nl_concat", "C2D + NL, concatenation", "c2d", "concatenation"),
    DemoModel("i3d", "I3D baseline", "i3d", None),
    DemoModel("i3d_nl", "I3D + NL, embedded Gaussian", "i3d", "embedded_gaussian"),
)
QUICK_MODELS = (DEMO_MODELS[0], DEMO_MODELS[2], DEMO_MODELS[5], DEMO_MODELS[6])

_EMB = "embedded_gaussian"
ABLATIONS: dict[str, tuple[DemoModel, ...]] = {
    # the paper's Table 2b: one block after res2, res3 or res4
    "stage": (
        DEMO_MODELS[0],
        DemoModel("nl_res2", "C2D + NL after res2", "c2d", _EMB, after=(0,)),
        DemoModel("nl_res3", "C2D + NL after res3", "c2d", _EMB, after=(1,)),
        DemoModel("nl_res4", "C2D + NL after res4", "c2d", _EMB, after=(2,)),
    ),
    # Table 2c at this scale (one block per stage, added from res4 down): 1, 2 or 3 blocks
    "blocks": (
        DEMO_MODELS[0],
        DemoModel("nl_1", "C2D + 1 NL block (res4)", "c2d", _EMB, after=(2,)),
        DemoModel("nl_2", "C2D + 2 NL blocks (res3, res4)", "c2d", _EMB, after=(1, 2)),
        DemoModel("nl_3", "C2D + 3 NL blocks (res2, res3, res4)", "c2d", _EMB, after=(0, 1, 2)),
    ),
    # Table 2d: attention within a frame, along time at one position, or over space-time
    "spacetime": (
        DEMO_MODELS[0],
        DemoModel("nl_space", "C2D + NL, space only", "c2d", _EMB, attend="space"),
        DemoModel("nl_time", "C2D + NL, time only", "c2d", _EMB, attend="time"),
        DemoModel("nl_spacetime", "C2D + NL, space-time", "c2d", _EMB),
    ),
}
"""``nonlocalnet demo --ablation NAME``: the paper's Table 2b/2c/2d at the demo's scale, each with
its C2D baseline; every non-local model is the demo's embedded Gaussian C2D but for the ablated
setting."""


def model_section(model: DemoModel, num_classes: int, recipe: VideoDemoSection) -> dict[str, Any]:
    """The ``model`` section of a training config, the network given whole as a ``spec``
    (:class:`~nonlocalnet.models.VideoResNetSpec` as data): a bottleneck ResNet with one block
    per stage (inner widths ``recipe.widths``), a narrow 7x7 stem and light temporal pooling.
    The non-local block sits after res4 (the paper's single block of Table 2a), with the
    paper's block settings; the I3D variant inflates conv1 to ``recipe.i3d_conv1`` frames and the first 1x1
    of the blocks of the stages ``recipe.i3d_inflated`` to 3."""
    i3d = model.arch == "i3d"
    stages = [
        {
            "depth": 1,
            "width": w,
            "stride": 1 if i == 0 else 2,
            "temporal_a": [3 if i3d and i in recipe.i3d_inflated else 1],
            "temporal_b": [1],
        }
        for i, w in enumerate(recipe.widths)
    ]
    if model.mode is not None:
        for i in model.after:
            stages[i]["nonlocal_after"] = [0]
    block = NonLocalOptions.paper(
        mode=model.mode or "embedded_gaussian",
        sub_sample=recipe.sub_sample,
        use_scale=recipe.scale and model.mode in SOFTMAX_MODES,
        attend=model.attend,
    ).to_dict()
    spec = {
        "stages": stages,
        "stem_width": recipe.stem_width,
        "conv1_temporal": recipe.i3d_conv1 if model.arch == "i3d" else 1,
        "conv1_temporal_stride": 1,
        "pool1_temporal": recipe.pool1_temporal,
        "pool1_temporal_stride": recipe.pool1_temporal,
        "pool2_temporal": recipe.pool2_temporal,
        "nonlocal_options": block,
    }
    section: dict[str, Any] = {"name": None, "spec": spec, "num_classes": num_classes, "dropout": 0.0}
    if i3d:
        section["temporal_padding"] = recipe.i3d_temporal_padding
    return section
