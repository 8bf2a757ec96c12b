"""``add_nonlocal``: put non-local blocks after named modules of any existing network."""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError, check_module
from nonlocalnet.layers import NonLocalBlock, NonLocalOptions
from nonlocalnet.layers.norm import BATCHNORMS

__all__ = ["NONLOCAL_ATTR", "add_nonlocal"]

NONLOCAL_ATTR = "nl"
"""Name under which the block is attached to the module it follows (``layer3.4.nl.theta...``)."""

_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_NORMS = {bn: dim for dim, bn in BATCHNORMS.items()}


def _out_channels_and_dim(module: nn.Module) -> tuple[int, int] | None:
    """Output channels and dimensionality of a module: those of its last conv or BN layer."""
    found = None
    for m in module.modules():
        for types, attr in ((_DIMS, "out_channels"), (_NORMS, "num_features")):
            for cls, dim in types.items():
                if isinstance(m, cls):
                    found = (getattr(m, attr), dim)
    return found


_WITH_NONLOCAL: dict[type[nn.Module], type[nn.Module]] = {}
_NEWOBJ, _RECONSTRUCTOR = vars(copyreg)["__newobj__"], vars(copyreg)["_reconstructor"]


def _nonlocal_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``cls`` whose ``forward`` applies ``self.nl`` to ``cls.forward``'s output
    (one per class). It pickles as ``cls`` plus a swap back, as pickle cannot find a class made at
    runtime by name."""
    if cls not in _WITH_NONLOCAL:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
            return getattr(self, NONLOCAL_ATTR)(cls.forward(self, *args, **kwargs))

        def __reduce_ex__(self: nn.Module, protocol: Any) -> Any:
            reduce_ex: Callable[..., Any] = cls.__reduce_ex__
            reduced = reduce_ex(self, protocol)
            generic = (_NEWOBJ, _RECONSTRUCTOR)  # object's: (cls, ...) + state
            if isinstance(reduced, tuple) and reduced[0] in generic and reduced[1][0] is sub:
                return (_new_with_nonlocal, (cls,), *reduced[2:])
            return reduced

        sub = type(
            f"{cls.__name__}WithNonLocal",
            (cls,),
            {"forward": forward, "__reduce_ex__": __reduce_ex__},
        )
        _WITH_NONLOCAL[cls] = sub
    return _WITH_NONLOCAL[cls]


def _new_with_nonlocal(cls: type[nn.Module]) -> nn.Module:
    """Unpickling: an empty instance of ``cls``'s non-local subclass (pickle then sets its state)."""
    obj: nn.Module = object.__new__(cls)
    obj.__class__ = _nonlocal_class(cls)
    return obj


def _with_nonlocal_forward(module: nn.Module) -> None:
    """Make ``module(x)`` return ``module.nl(original forward(x))`` for this instance only."""
    module.__class__ = _nonlocal_class(type(module))


def add_nonlocal(
    model: nn.Module,
    after: Sequence[str],
    *,
    in_channels: int | None = None,
    dim: int | None = None,
    options: NonLocalOptions | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> list[NonLocalBlock]:
    """Insert a :class:`NonLocalBlock` after each named module (e.g. ``"layer3.4"`` of a
    torchvision ResNet), in place. Returns the new blocks.

    Channels and dimensionality are inferred from the module's last conv or BatchNorm unless
    given. The block becomes the submodule ``nl`` (:data:`NONLOCAL_ATTR`) of the module it
    follows, so every existing state-dict key keeps its name and pretrained weights still load;
    the block is the identity at initialisation, so the network's outputs are unchanged until it
    trains. The block starts in
    the module's mode (eval after ``model.eval()``) and follows later ``.train()``/``.eval()``
    calls; the network still pickles and deep-copies. ``options`` (a :class:`NonLocalOptions`
    or a mapping of its fields) and ``overrides`` (its field names, e.g. ``mode``, and
    ``inter_channels``) go to :class:`NonLocalBlock`.
    """
    check_module(model, "add_nonlocal(model, after)")
    if isinstance(after, str):
        raise InvalidTypeError(f"after must be a list of module names, got the string {after!r}")
    modules = dict(model.named_modules())
    blocks = []
    for name in after:
        if name not in modules or name == "":
            names = [n for n in modules if n]
            raise InvalidValueError(
                f"no module named {name!r} in {type(model).__name__}; modules: {names[:40]}..."
            )
        target = modules[name]
        if getattr(target, NONLOCAL_ATTR, None) is not None:
            raise InvalidValueError(
                f"module {name!r} already has a non-local block (attribute {NONLOCAL_ATTR!r})"
            )
        inferred = _out_channels_and_dim(target)
        channels = in_channels if in_channels is not None else (inferred[0] if inferred else None)
        ndim = dim if dim is not None else (inferred[1] if inferred else None)
        if channels is None or ndim is None:
            raise InvalidValueError(
                f"cannot infer the output channels of {name!r} ({type(target).__name__}): "
                "it has no conv or BatchNorm layer; pass in_channels= and dim="
            )
        param = next(target.parameters(), None)
        block = NonLocalBlock(channels, dim=ndim, options=NonLocalOptions.coerce(options), **overrides)
        if param is not None:
            block = block.to(device=param.device, dtype=param.dtype)
        block.train(target.training)  # later .train()/.eval() calls reach it through target
        target.add_module(NONLOCAL_ATTR, block)
        # A Sequential runs its new last child itself; a Bottleneck3d applies its ``nl`` already.
        if not isinstance(target, nn.Sequential) and not getattr(target, "applies_nonlocal", False):
            _with_nonlocal_forward(target)
        blocks.append(block)
    return blocks
