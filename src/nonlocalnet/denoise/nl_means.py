"""Non-local means (Buades, Coll, Morel 2005) on torch tensors, as an instance of the non-local
operation ``y_i = 1/C(x) sum_j f(x_i, x_j) x_j`` with ``f`` a Gaussian of patch distances.

Weights: ``w_ij = exp(-max(d2_ij - 2 sigma^2, 0) / h^2)`` where ``d2_ij`` is the squared
difference of the ``p x p`` patches around ``i`` and ``j``, averaged over the channels and over
the patch with Gaussian weights (std ``(p - 1) / 4``, as Buades et al. and scikit-image's slow
mode; ``patch_weights="uniform"`` gives its fast mode's plain mean), and ``j != i`` ranges over
the pixels of the ``search_window x search_window`` window around ``i`` that lie inside the image
(and frames ``t - tw//2 .. t + tw//2`` inside the clip, for videos; no mirrored duplicates).
Patches that cross the border are reflected. The pixel itself weighs ``w_ii = max_j w_ij``
(``centre_weight="max"``, Buades, Coll, Morel, IPOL 2011: with ``w_ii = 1`` it would dominate
its own average), or 1 if every other weight underflows; ``centre_weight="one"`` keeps the
plain ``w_ii = exp(0) = 1``. The fully non-local mode uses the whole image as the window, with
the same patch weights and centre rule, without the ``2 sigma^2`` clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.ops import softmax_attention

__all__ = ["default_h", "estimate_sigma", "nl_means", "nl_means_video", "psnr"]

_MAD_TO_STD = 0.6744897501960817  # the median of |N(0, 1)|
_Sigma = TypeVar("_Sigma", float, Tensor)


def estimate_sigma(image: Tensor) -> Tensor:
    """Noise standard deviation per image, ``(B,)``, for ``(H, W)``, ``(C, H, W)`` or
    ``(B, C, H, W)`` input.

    Donoho's robust estimator: the median absolute value of the finest diagonal Haar wavelet
    coefficients ``(a - b - c + d) / 2`` (orthonormal, so white noise of std sigma keeps std
    sigma there, while smooth image content nearly vanishes), divided by 0.6745; channels are
    averaged.
    """
    x = _from_user(image, "image", None, (2, 3, 4), "(H, W), (C, H, W) or (B, C, H, W)")[0]
    x = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x[None, None]
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        raise InvalidValueError(f"need at least 2 x 2 pixels to estimate sigma, got {h} x {w}")
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    hh = (x[:, :, 0::2, 0::2] - x[:, :, 0::2, 1::2] - x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2]) / 2
    sigma = hh.abs().flatten(2).median(dim=2).values / _MAD_TO_STD  # (B, C)
    return sigma.mean(dim=1)


def default_h(sigma: _Sigma) -> _Sigma:
    """``h = 0.8 sigma``: scikit-image's documented choice for this (fast-mode) weight form."""
    return 0.8 * sigma


def _from_user(
    x: Tensor | np.ndarray, name: str, channel_axis: int | None, ranks: tuple[int, ...], layouts: str
) -> tuple[Tensor, Callable[[Tensor], Tensor | np.ndarray]]:
    """Check a user's image or video (torch or NumPy) and bring its channels to dim -3; returns
    it and the function that gives a result back in the user's type and layout."""
    numpy = isinstance(x, np.ndarray)
    if isinstance(x, np.ndarray):
        floating = bool(np.issubdtype(x.dtype, np.floating))
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, Tensor):
        floating, t = x.is_floating_point(), x
    else:
        raise InvalidTypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if not floating:
        raise InvalidTypeError(
            f"{name} must be floating point (e.g. uint8 / 255 for [0, 1] images), got dtype {x.dtype}: "
            "integer images are ambiguous about their range"
        )
    if channel_axis is None and numpy and t.dim() > min(ranks):
        raise InvalidValueError(
            f"{name}: a {t.dim()}-D NumPy array needs channel_axis (-1 for channels last, as "
            f"scikit-image and OpenCV store colour; 0 or 1 for channels first); got shape {tuple(t.shape)}"
        )
    if channel_axis is not None:
        if not isinstance(channel_axis, int) or not -t.dim() <= channel_axis < t.dim():
            raise InvalidValueError(
                f"channel_axis {channel_axis!r} is not an axis of {name} with shape {tuple(t.shape)}"
            )
        t = t.movedim(channel_axis, -3) if t.dim() >= 3 else t
    if t.dim() not in ranks:
        raise InvalidValueError(f"{name} must be {layouts}, got shape {tuple(x.shape)}")
    if torch.isnan(t).any():
        raise InvalidValueError(f"{name} contains NaN")

    def back(y: Tensor) -> Tensor | np.ndarray:
        if channel_axis is not None and y.dim() >= 3:
            y = y.movedim(-3, channel_axis)
        return y.numpy() if numpy else y

    return t, back


def _check_fit(patch_size: int, search_window: int | None, size: Sequence[int], thing: str) -> None:
    """The patch (and the search window) must fit inside ``thing`` (an image, frames) of ``size``
    ``(height, width)``."""
    height, width = size
    need = patch_size // 2 + (search_window // 2 if search_window is not None else 0)
    if need >= min(height, width):
        what = f"patch_size {patch_size}" + (f" + search_window {search_window}" if search_window else "")
        verb = "need" if search_window else "needs"
        raise InvalidValueError(
            f"{what} {verb} {thing} larger than {need} pixels per side, got {height} x {width}"
        )


def _check_options(patch_size: int, search_window: int, kind: str, centre: str, tile_size: int) -> None:
    _check_odd(patch_size, "patch_size")
    _check_odd(search_window, "search_window")
    _check_weights(kind, centre)
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 1:
        raise InvalidValueError(f"tile_size must be a positive int, got {tile_size!r}")


def _check_weights(kind: str, centre: str) -> None:
    if kind not in ("gaussian", "uniform"):
        raise InvalidValueError(f"patch_weights must be 'gaussian' or 'uniform', got {kind!r}")
    if centre not in ("max", "one"):
        raise InvalidValueError(f"centre_weight must be 'max' or 'one', got {centre!r}")


def _check_odd(value: int, name: str) -> None:
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise InvalidValueError(f"{name} must be a positive odd int, got {value!r}")


def _patch_kernel(p: int, kind: str, like: Tensor) -> Tensor:
    """1-D weights ``(p,)`` whose outer product weights a patch: ``"uniform"`` (scikit-image's
    fast mode) or ``"gaussian"`` with std ``(p - 1) / 4`` (its slow mode, Buades et al.)."""
    if kind == "uniform":
        k = torch.ones(p, dtype=like.dtype, device=like.device)
    else:
        a = max((p - 1) / 4, 1e-6)
        r = torch.arange(p, dtype=like.dtype, device=like.device) - p // 2
        k = torch.exp(-(r**2) / (2 * a * a))
    return k / k.sum()


def _patch_mean(x: Tensor, kernel: Tensor) -> Tensor:
    """Weighted mean over ``p x p`` windows (valid), separably as sums of ``p`` shifted slices:
    ``(..., H, W) -> (..., H-p+1, W-p+1)``. Exact up to float rounding and several times faster
    than ``avg_pool2d`` on CPU for these shapes."""
    p = kernel.numel()
    height, width = x.shape[-2] - p + 1, x.shape[-1] - p + 1
    cols = x[..., :width] * kernel[0]
    for k in range(1, p):
        cols = cols.add_(x[..., k : k + width], alpha=float(kernel[k]))
    rows = cols[..., :height, :] * kernel[0]
    for k in range(1, p):
        rows = rows.add_(cols[..., k : k + height, :], alpha=float(kernel[k]))
    return rows


def _resolve(frames: Tensor, sigma: float | Tensor | None, h: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-item ``(sigma, h, unchanged)`` for ``(B, T, C, H, W)``: sigma given or estimated over
    all frames; h given or :func:`default_h`. ``unchanged`` marks the items whose default h is 0
    (sigma 0: a noise-free item, returned as it is); a given h must be > 0."""
    b, t = frames.shape[:2]
    if sigma is None:
        s = estimate_sigma(frames.reshape(b * t, *frames.shape[2:])).reshape(b, t).mean(dim=1)
    else:
        s = torch.as_tensor(sigma, dtype=frames.dtype).expand(b)
        if not (s >= 0).all():  # NaN too
            raise InvalidValueError(f"sigma must be >= 0, got {s.tolist()}")
    hh: Tensor
    unchanged: Tensor
    if h is None:
        hh = default_h(s)
        unchanged = hh == 0
    else:
        hh = torch.as_tensor(h, dtype=frames.dtype).expand(b)
        unchanged = torch.zeros(b, dtype=torch.bool)
    if (hh[~unchanged] <= 0).any():
        raise InvalidValueError(f"h must be > 0, got {hh.tolist()}")
    return s.to(frames), hh.to(frames), unchanged.to(frames.device)


def _per_item(x: Tensor, unchanged: Tensor, denoise: Callable[[Tensor, Tensor | slice], Tensor]) -> Tensor:
    """``denoise(items, index)`` on the items of ``x`` not marked ``unchanged``; those are copied."""
    if not unchanged.any():
        return denoise(x, slice(None))
    y = x.clone()
    todo = (~unchanged).nonzero().flatten()
    if todo.numel():
        y[todo] = denoise(x[todo], todo)
    return y


@dataclass(frozen=True)
class _Sums:
    """The windowed NL-means accumulators ``(B, T, C or 1, H, W + 2 rs)``: weighted sums, weight
    sums and the largest weight of each pixel."""

    num: Tensor
    den: Tensor
    wmax: Tensor


@dataclass(frozen=True)
class _Shift:
    """One band of pixel pairs: rows ``y0..y1`` of frame ``t0`` against the same rows shifted by
    ``dy`` and by each of ``dxs`` in frame ``t1``."""

    t0: int
    t1: int
    dy: int
    dxs: range
    y0: int
    y1: int


def _shift_weights(
    padded: Tensor, s: _Shift, kernel: Tensor, rp: int, rs: int, two_s2: Tensor, inv_h2: Tensor
) -> tuple[Tensor, Tensor]:
    """The pairs' weights ``(len(dxs), B, y1 - y0, W)``, ``exp(-max(d^2 - 2 sigma^2, 0) / h^2)`` of
    the patch distances ``d^2``, and the candidates' padded patches ``(len(dxs), B, C, ., .)``."""
    width = padded.shape[-1] - 2 * rp - 2 * rs
    ref = padded[:, s.t0, :, s.y0 : s.y1 + 2 * rp, rs : rs + width + 2 * rp]
    band = padded[:, s.t1, :, s.y0 + s.dy : s.y1 + s.dy + 2 * rp]
    cand = torch.stack([band[..., rs + dx : rs + dx + width + 2 * rp] for dx in s.dxs])
    d2 = _patch_mean((cand - ref).square().sum(dim=2), kernel) / padded.shape[2]  # (S, B, n, W)
    return torch.exp(-(d2 - two_s2).clamp_(min=0) * inv_h2), cand


def _accumulate(acc: _Sums, padded: Tensor, s: _Shift, w: Tensor, cand: Tensor, rp: int, rs: int) -> None:
    """Add the weights ``w`` of one band both ways: ``i -> j`` (the candidates' centres into rows
    ``y0..y1`` of frame ``t0``) and ``j -> i`` (the band's own pixels into the candidates' places
    in frame ``t1``)."""
    width = padded.shape[-1] - 2 * rp - 2 * rs
    n = s.y1 - s.y0
    centre = cand[..., rp : rp + n, rp : rp + width]
    acc.num[:, s.t0, :, s.y0 : s.y1, rs : rs + width] += (w[:, :, None] * centre).sum(dim=0)
    acc.den[:, s.t0, 0, s.y0 : s.y1, rs : rs + width] += w.sum(dim=0)
    top = acc.wmax[:, s.t0, 0, s.y0 : s.y1, rs : rs + width]
    torch.maximum(top, w.amax(dim=0), out=top)
    mine = padded[:, s.t0, :, s.y0 + rp : s.y0 + rp + n, rs + rp : rs + rp + width]  # (B, C, n, W)
    for k, dx in enumerate(s.dxs):
        rows, cols = slice(s.y0 + s.dy, s.y1 + s.dy), slice(rs + dx, rs + dx + width)
        acc.num[:, s.t1, :, rows, cols].addcmul_(w[k, :, None], mine)
        acc.den[:, s.t1, 0, rows, cols].add_(w[k])
        top = acc.wmax[:, s.t1, 0, rows, cols]
        torch.maximum(top, w[k], out=top)


def _windowed(
    frames: Tensor,
    sigma: Tensor,
    h: Tensor,
    p: int,
    sw: int,
    tw: int,
    tile: int,
    patch_weights: str,
    centre_weight: str,
) -> Tensor:
    """Exact windowed NL-means on ``(B, T, C, H, W)``; temporal window ``tw`` (1 for images).

    Patch distances are symmetric, so each unordered pair ``{i, j}`` is computed once (shift
    ``s`` from ``i`` to ``j``, never ``-s`` too) and its weight added to both ``i`` and ``j``;
    per vertical shift, every horizontal shift of a row band is processed at once.
    """
    b, t, c, height, width = frames.shape
    rp, rs, rt = p // 2, sw // 2, tw // 2
    # reflect by the patch radius (patches at the borders), zeros for the horizontal search
    # reach (candidates outside the image get weight 0)
    padded = F.pad(frames.reshape(b * t, c, height, width), (rp, rp, rp, rp), mode="reflect")
    padded = F.pad(padded, (rs, rs)).reshape(b, t, c, height + 2 * rp, width + 2 * rp + 2 * rs)
    kernel = _patch_kernel(p, patch_weights, frames)
    two_s2 = (2 * sigma**2)[None, :, None, None]
    inv_h2 = (1 / h**2)[None, :, None, None]
    # accumulators with the horizontal search reach on both sides, so scatters never clip
    num = torch.zeros(b, t, c, height, width + 2 * rs, dtype=frames.dtype, device=frames.device)
    den = torch.zeros(b, t, 1, height, width + 2 * rs, dtype=frames.dtype, device=frames.device)
    wmax = torch.zeros_like(den)
    # 1 where column x + dx lies inside the image, for dx = -rs..rs: (2 rs + 1, 1, 1, W)
    reach = (
        torch.arange(width, device=frames.device) + torch.arange(-rs, rs + 1, device=frames.device)[:, None]
    )
    inside = ((reach >= 0) & (reach < width)).to(frames.dtype)[:, None, None]
    acc = _Sums(num, den, wmax)
    for t0 in range(t):
        for dt in range(0, min(rt, t - 1 - t0) + 1):
            for dy in range(0 if dt == 0 else -rs, rs + 1):
                first = rs + 1 if (dt == 0 and dy == 0) else 0  # the pixel's own row: dx > 0 only
                if first - rs > rs:
                    continue
                lo, hi = max(0, -dy), min(height, height - dy)  # rows i whose i + dy is inside
                for y0 in range(lo, hi, tile):
                    shift = _Shift(t0, t0 + dt, dy, range(first - rs, rs + 1), y0, min(hi, y0 + tile))
                    w, cand = _shift_weights(padded, shift, kernel, rp, rs, two_s2, inv_h2)
                    _accumulate(acc, padded, shift, w * inside[first:], cand, rp, rs)
    num, den, wmax = (a[..., rs : rs + width] for a in (num, den, wmax))
    # Buades et al.: the pixel itself weighs as its best match (1 if every match underflowed)
    self_w = torch.where(wmax > 0, wmax, 1.0) if centre_weight == "max" else 1.0
    return (num + self_w * frames) / (den + self_w)


_CHUNK_ELEMENTS = 1 << 22  # pairwise weights per chunk of the fully non-local "max" loop


def _fully_nonlocal(x: Tensor, h: Tensor, p: int, patch_weights: str, centre_weight: str) -> Tensor:
    """Every pixel ``i`` weighs every pixel ``j`` of its image by ``exp(-d2_ij / h^2)``, ``d2`` the
    windowed mode's patch distance (without the ``-2 sigma^2`` clamp, which does not factorise).

    The patch weights factorise: each patch entry is scaled by the square root of its kernel
    weight, so ``d2 = |P_i - P_j|^2 / C``. With ``centre_weight="one"`` (``j = i`` has ``d2 = 0``,
    weight 1) this is the fused/chunked attention: ``exp(-d2 / h^2)`` is
    ``exp((2 P_i.P_j - |P_j|^2) / (C h^2))`` up to a per-row constant, so no ``N x N`` matrix is
    formed. ``"max"`` needs each pixel's best match other than itself, which a normalised
    attention cannot give; it loops over chunks of rows (memory ``chunk x N``).
    """
    b, c, height, width = x.shape
    rp = p // 2
    patches = F.unfold(F.pad(x, (rp, rp, rp, rp), mode="reflect"), p).transpose(1, 2)  # (B, N, D)
    root = _patch_kernel(p, patch_weights, x)
    root = torch.outer(root, root).sqrt().flatten().repeat(c)  # unfold's order: channel, row, column
    patches = patches * root
    values = x.flatten(2).transpose(1, 2)  # (B, N, C)
    k = 1 / (c * h**2)[:, None, None]
    if centre_weight == "one":
        ones = torch.ones_like(patches[..., :1])
        theta = torch.cat([2 * k * patches, ones], dim=2)
        phi = torch.cat([patches, -k * patches.square().sum(dim=2, keepdim=True)], dim=2)
        y = softmax_attention(theta, phi, values, scale=1.0, algorithm="chunked")
    else:
        n = patches.shape[1]
        sq = patches.square().sum(dim=2)  # (B, N)
        y = torch.empty_like(values)
        chunk = max(1, _CHUNK_ELEMENTS // (b * n))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            d2 = torch.baddbmm(
                sq[:, s:e, None] + sq[:, None, :], patches[:, s:e], patches.transpose(1, 2), alpha=-2
            )
            w = d2.clamp_(min=0).mul_(-k).exp_()  # (B, n, N)
            rows = torch.arange(e - s, device=x.device)
            w[:, rows, rows + s] = 0  # j != i
            top = w.amax(dim=2)
            self_w = torch.where(top > 0, top, 1.0)[..., None]  # 1 if every match underflowed
            y[:, s:e] = (torch.bmm(w, values) + self_w * values[:, s:e]) / (
                w.sum(dim=2, keepdim=True) + self_w
            )
    return y.transpose(1, 2).reshape(b, c, height, width)


def nl_means(
    image: Tensor,
    sigma: float | Tensor | None = None,
    h: float | None = None,
    patch_size: int = 7,
    search_window: int = 21,
    *,
    fully_nonlocal: bool = False,
    patch_weights: str = "gaussian",
    centre_weight: str = "max",
    tile_size: int = 256,
    channel_axis: int | None = None,
) -> Tensor | np.ndarray:
    """Denoise ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` float images; same shape out.

    Takes a torch tensor or a NumPy array and returns the same kind. ``channel_axis`` says where
    the channels are when they are not at dim -3: ``-1`` for the ``(H, W, C)`` colour images of
    scikit-image and OpenCV (a NumPy array with more than two dims must say).

    ``sigma``: noise std (estimated per image by :func:`estimate_sigma` if None); ``h``: filter
    strength (default :func:`default_h`); ``centre_weight`` the pixel's own weight (see the
    module docstring). The windowed computation is exact: for each shift it forms the squared
    difference image and box-filters it into patch distances (no patch pairs are unfolded;
    ``patch_weights`` chooses a Gaussian-weighted or plain patch mean). Distances are symmetric,
    so only half of the ``search_window^2`` shifts are computed, each weight serving both
    pixels of its pair. Rows are processed in tiles of ``tile_size`` to bound memory.
    ``fully_nonlocal=True`` searches the whole image (``search_window`` is not used), with the
    same patch weights and centre rule but without the ``2 sigma^2`` clamp; memory linear in the
    number of pixels (see :func:`_fully_nonlocal`).

    An image whose sigma is 0 (estimated: no noise found; or given) and for which no ``h`` was
    given is returned unchanged (a copy), per image of a batch: that is the limit ``h -> 0``,
    where only identical patches, hence identical pixels, keep weight. A given ``h`` must be > 0.
    """
    x, back = _from_user(image, "image", channel_axis, (2, 3, 4), "(H, W), (C, H, W) or (B, C, H, W)")
    shape = x.shape
    x = x.reshape(-1, *shape[-3:]) if x.dim() >= 3 else x[None, None]
    _check_options(patch_size, search_window, patch_weights, centre_weight, tile_size)
    _check_fit(patch_size, None if fully_nonlocal else search_window, x.shape[-2:], "an image")
    s, hh, unchanged = _resolve(x[:, None], sigma, h)

    def denoise(items: Tensor, idx: Tensor | slice) -> Tensor:
        if fully_nonlocal:
            return _fully_nonlocal(items, hh[idx], patch_size, patch_weights, centre_weight)
        return _windowed(
            items[:, None],
            s[idx],
            hh[idx],
            patch_size,
            search_window,
            1,
            tile_size,
            patch_weights,
            centre_weight,
        )[:, 0]

    return back(_per_item(x, unchanged, denoise).reshape(shape))


def nl_means_video(
    video: Tensor,
    sigma: float | None = None,
    h: float | None = None,
    patch_size: int = 7,
    search_window: int = 21,
    temporal_window: int = 3,
    *,
    patch_weights: str = "gaussian",
    centre_weight: str = "max",
    tile_size: int = 256,
    channel_axis: int | None = None,
) -> Tensor | np.ndarray:
    """Spatio-temporal NL-means on ``(T, C, H, W)`` or ``(B, T, C, H, W)``: 2D patches, a search
    window spanning ``temporal_window`` neighbouring frames (those inside the clip). A clip with
    sigma 0 and no ``h`` given is returned unchanged, as in :func:`nl_means`. NumPy arrays and
    ``channel_axis`` (``-1`` for ``(T, H, W, C)``) as in :func:`nl_means`."""
    v, back = _from_user(video, "video", channel_axis, (4, 5), "(T, C, H, W) or (B, T, C, H, W)")
    shape = v.shape
    v = v if v.dim() == 5 else v[None]
    _check_options(patch_size, search_window, patch_weights, centre_weight, tile_size)
    _check_odd(temporal_window, "temporal_window")
    t = v.shape[1]
    if temporal_window // 2 >= t:
        raise InvalidValueError(
            f"temporal_window {temporal_window} needs more than {temporal_window // 2} frames, got {t}"
        )
    _check_fit(patch_size, search_window, v.shape[-2:], "frames")
    s, hh, unchanged = _resolve(v, sigma, h)
    y = _per_item(
        v,
        unchanged,
        lambda items, idx: _windowed(
            items,
            s[idx],
            hh[idx],
            patch_size,
            search_window,
            temporal_window,
            tile_size,
            patch_weights,
            centre_weight,
        ),
    )
    return back(y.reshape(shape))


def psnr(estimate: Tensor, reference: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = F.mse_loss(estimate.double(), reference.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
