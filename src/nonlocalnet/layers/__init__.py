"""Neural-network layers built on :mod:`nonlocalnet.ops`."""

from nonlocalnet.layers.affine import AffineChannel
from nonlocalnet.layers.nonlocal_block import NonLocalBlock
from nonlocalnet.layers.options import ATTEND, PROJECTIONS, NonLocalOptions

__all__ = ["ATTEND", "PROJECTIONS", "AffineChannel", "NonLocalBlock", "NonLocalOptions"]
