"""Deprecated: the demo's synthetic task moved to :mod:`nonlocalnet.demo.synthetic` (it serves
only the demo). Names are looked up there on first use, with a warning; this alias goes away in
the next release."""

import importlib
import warnings


def __getattr__(name: str):
    warnings.warn(
        "nonlocalnet.data.synthetic is deprecated: use nonlocalnet.demo.synthetic",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("nonlocalnet.demo.synthetic"), name)
