"""nonlocalnet: Non-local Neural Networks (Wang, Girshick, Gupta, He, CVPR 2018) in PyTorch."""

from nonlocalnet.layers import BLOCK_PRESETS, NonLocalBlock
from nonlocalnet.ops import MODES

__version__ = "0.1.0"

__all__ = ["BLOCK_PRESETS", "MODES", "NonLocalBlock", "__version__"]
