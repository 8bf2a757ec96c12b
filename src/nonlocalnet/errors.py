"""The library's own exception types.

Every error nonlocalnet raises on purpose derives from :class:`NonLocalNetError`: an invalid
argument, option or configuration, a file that is missing or unreadable, broken data, a failed
peer process. Each also derives from the built-in type it always was (``ValueError``,
``TypeError``, ``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses keep
working. Anything else that escapes the library is a bug: the CLI prints ``NonLocalNetError``\\ s
as one line and lets every other exception show its traceback.
"""

from __future__ import annotations

__all__ = [
    "InvalidTypeError",
    "InvalidValueError",
    "MissingDependencyError",
    "MissingFileError",
    "NonLocalNetError",
    "ValidationError",
    "check_module",
]


class NonLocalNetError(Exception):
    """Base of the errors the library raises on purpose."""


class InvalidValueError(NonLocalNetError, ValueError):
    """An argument, option or file content has a value the library cannot use."""


class InvalidTypeError(NonLocalNetError, TypeError):
    """An argument has a type the library cannot use."""


class MissingFileError(NonLocalNetError, FileNotFoundError):
    """A file or folder the library was pointed at does not exist."""


class MissingDependencyError(NonLocalNetError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""


class ValidationError(NonLocalNetError, RuntimeError):
    """A validation during training failed; the message names the data and the checkpoint that
    holds the step, from which ``--resume`` validates again and continues."""


def check_module(model: object, call: str) -> None:
    """Raise :class:`InvalidTypeError` unless ``model`` is an ``nn.Module``; ``call`` shows the
    signature (e.g. ``"load_weights(model, path)"``)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"{call}: model must be an nn.Module, got {type(model).__name__}")
