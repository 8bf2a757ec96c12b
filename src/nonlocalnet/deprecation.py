"""Deprecation warnings for names and argument orders kept working for one release."""

from __future__ import annotations

import warnings

from nonlocalnet.errors import InvalidTypeError

__all__ = ["check_module", "warn_deprecated"]


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is deprecated in favour of ``new`` and goes in
    the next release. ``stacklevel=3`` names the caller of the function that calls this."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def check_module(model: object, call: str) -> None:
    """Raise ``TypeError`` unless ``model`` is an ``nn.Module``; ``call`` shows the signature
    (e.g. ``"load_weights(model, path)"``)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"{call}: model must be an nn.Module, got {type(model).__name__}")
