"""Pure tensor functions: the non-local operation and nothing else (the public names of
:mod:`nonlocalnet.ops.pairwise`)."""

from nonlocalnet.ops.pairwise import *  # noqa: F403
from nonlocalnet.ops.pairwise import __all__ as __all__
