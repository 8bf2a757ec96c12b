"""The paper's video models, insertion of blocks into any network, and weight import/export."""

from nonlocalnet.models.caffe2 import (
    RELEASED_CHECKPOINTS,
    Caffe2LoadReport,
    export_caffe2_blobs,
    load_caffe2_checkpoint,
    read_caffe2_pickle,
    save_caffe2_pickle,
)
from nonlocalnet.models.complexity import Complexity, measure_complexity
from nonlocalnet.models.inflate import InflationReport, inflate_2d_to_3d, inflate_kernel
from nonlocalnet.models.insert import add_nonlocal
from nonlocalnet.models.registry import (
    VARIANTS,
    ModelInfo,
    build_model,
    get_model_info,
    list_models,
    model_spec,
)
from nonlocalnet.models.resnet3d import Bottleneck3d, StageSpec, VideoResNet, VideoResNetSpec
from nonlocalnet.models.weights import load_weights, save_weights

__all__ = [
    "RELEASED_CHECKPOINTS",
    "VARIANTS",
    "Bottleneck3d",
    "Caffe2LoadReport",
    "Complexity",
    "InflationReport",
    "ModelInfo",
    "StageSpec",
    "VideoResNet",
    "VideoResNetSpec",
    "add_nonlocal",
    "build_model",
    "export_caffe2_blobs",
    "get_model_info",
    "inflate_2d_to_3d",
    "inflate_kernel",
    "list_models",
    "load_caffe2_checkpoint",
    "load_weights",
    "measure_complexity",
    "model_spec",
    "read_caffe2_pickle",
    "save_caffe2_pickle",
    "save_weights",
]


def __getattr__(name: str):
    if name == "choose_memory_format":  # moved: timing a model on its device is an engine concern
        import importlib
        import warnings

        warnings.warn(
            "nonlocalnet.models.choose_memory_format is deprecated: "
            "use nonlocalnet.engine.choose_memory_format",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("nonlocalnet.engine.layout").choose_memory_format
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
