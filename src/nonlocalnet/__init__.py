"""nonlocalnet: Non-local Neural Networks (Wang, Girshick, Gupta, He, CVPR 2018) in PyTorch."""

from nonlocalnet.errors import NonLocalNetError
from nonlocalnet.layers import NonLocalBlock, NonLocalOptions
from nonlocalnet.models import (
    VideoResNet,
    add_nonlocal,
    build_model,
    inflate_2d_to_3d,
    list_models,
    load_caffe2_checkpoint,
)
from nonlocalnet.ops import MODES

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "NonLocalBlock",
    "NonLocalNetError",
    "NonLocalOptions",
    "VideoResNet",
    "__version__",
    "add_nonlocal",
    "build_model",
    "inflate_2d_to_3d",
    "list_models",
    "load_caffe2_checkpoint",
]
