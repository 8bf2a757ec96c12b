"""Neural-network layers built on :mod:`nonlocalnet.ops`."""

from nonlocalnet.layers.affine import AffineChannel
from nonlocalnet.layers.nonlocal_block import BLOCK_PRESETS, NonLocalBlock

__all__ = ["BLOCK_PRESETS", "AffineChannel", "NonLocalBlock"]
