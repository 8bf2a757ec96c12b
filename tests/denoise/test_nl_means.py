import math

import numpy as np
import pytest
import torch

from nonlocalnet.denoise import estimate_sigma, nl_means, nl_means_video, psnr


def brute_force(frames, sigma, h, p, sw, tw=1, weights="gaussian", centre="max"):
    """Float64 loops over every pixel i and every j != i of its window inside the image (and the
    clip): the formula, literally, with w_ii = max_j w_ij (1 if all are 0) or 1."""
    x = frames.double().numpy()  # (T, C, H, W)
    r = np.arange(p) - p // 2
    kern = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * ((p - 1) / 4) ** 2))
    kern = kern / kern.sum() if weights == "gaussian" else np.full((p, p), 1 / p**2)
    t, c, height, width = x.shape
    rp, rs, rt = p // 2, sw // 2, tw // 2
    xp = np.pad(x, ((0, 0), (0, 0), (rp, rp), (rp, rp)), mode="reflect")
    out = np.zeros_like(x)
    for ti in range(t):
        for yi in range(height):
            for xi in range(width):
                ref = xp[ti, :, yi : yi + p, xi : xi + p]
                num, den, top = np.zeros(c), 0.0, 0.0
                for tj in range(max(0, ti - rt), min(t, ti + rt + 1)):
                    for yj in range(max(0, yi - rs), min(height, yi + rs + 1)):
                        for xj in range(max(0, xi - rs), min(width, xi + rs + 1)):
                            if (tj, yj, xj) == (ti, yi, xi):
                                continue
                            other = xp[tj, :, yj : yj + p, xj : xj + p]
                            d2 = np.sum(np.mean((other - ref) ** 2, axis=0) * kern)
                            w = math.exp(-max(d2 - 2 * sigma**2, 0) / h**2)
                            num += w * x[tj, :, yj, xj]
                            den += w
                            top = max(top, w)
                self_w = (top if top > 0 else 1.0) if centre == "max" else 1.0
                out[ti, :, yi, xi] = (num + self_w * x[ti, :, yi, xi]) / (den + self_w)
    return torch.from_numpy(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("tile", [256, 3])
@pytest.mark.parametrize(
    ("weights", "centre"), [("gaussian", "max"), ("uniform", "max"), ("gaussian", "one")]
)
def test_matches_brute_force(channels, tile, weights, centre):
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(channels, 9, 11, generator=gen, dtype=torch.float64)
    kw = {"patch_weights": weights, "centre_weight": centre}
    out = nl_means(img, sigma=0.1, h=0.15, patch_size=5, search_window=5, tile_size=tile, **kw)
    ref = brute_force(img[None], 0.1, 0.15, 5, 5, weights=weights, centre=centre)[0]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    f32 = nl_means(img.float(), sigma=0.1, h=0.15, patch_size=5, search_window=5, **kw)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), ref, atol=1e-5, rtol=1e-5)


def test_video_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(4, 2, 8, 9, generator=gen, dtype=torch.float64)
    for tw, tile in ((3, 256), (5, 2)):
        out = nl_means_video(
            video, sigma=0.05, h=0.2, patch_size=3, search_window=3, temporal_window=tw, tile_size=tile
        )
        ref = brute_force(video, 0.05, 0.2, 3, 3, tw=tw)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_shapes_batches_and_identity_limits():
    gen = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, 12, 12, generator=gen)
    out = nl_means(img, sigma=0.1, patch_size=3, search_window=5)
    assert out.shape == img.shape
    torch.testing.assert_close(out[1], nl_means(img[1], sigma=0.1, patch_size=3, search_window=5))
    # h -> 0: only identical patches (the pixel itself) keep weight: the image comes back
    torch.testing.assert_close(nl_means(img, sigma=0.0, h=1e-4, patch_size=3, search_window=5), img)
    const = torch.full((1, 16, 16), 0.3)
    torch.testing.assert_close(nl_means(const, sigma=0.1), const)
    assert nl_means(img[0, 0], sigma=0.1, patch_size=3, search_window=5).shape == (12, 12)


def _smooth_image(size=64, seed=0):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = 0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy)
    img[size // 4 : size // 2, size // 4 : 3 * size // 4] = 0.9  # an edge-bounded block
    return img


def test_denoising_improves_psnr_and_sigma_estimate():
    clean = _smooth_image()
    gen = torch.Generator().manual_seed(3)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    est = estimate_sigma(noisy).item()
    assert abs(est - 0.1) < 0.015
    den = nl_means(noisy)
    assert psnr(den, clean) > psnr(noisy, clean) + 5
    colour = torch.stack([clean, clean * 0.8, 1 - clean])
    noisy_c = colour + 0.1 * torch.randn(colour.shape, generator=gen)
    assert psnr(nl_means(noisy_c), colour) > psnr(noisy_c, colour) + 5


def test_fully_nonlocal_mode():
    clean = _smooth_image(32)
    gen = torch.Generator().manual_seed(4)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    out = nl_means(noisy, sigma=0.1, h=0.12, patch_size=5, fully_nonlocal=True)
    # against the explicit all-pairs weights exp(-d2 / h^2)
    x = noisy[None, None].double()
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), 5)[0].T
    d2 = torch.cdist(patches, patches).square() / 25
    w = torch.exp(-d2 / 0.12**2)
    ref = (w @ x.flatten()) / w.sum(1)
    torch.testing.assert_close(out.double().flatten(), ref, atol=1e-4, rtol=1e-4)
    assert psnr(out, clean) > psnr(noisy, clean) + 3


def test_errors():
    img = torch.rand(16, 16)
    with pytest.raises(TypeError, match="floating point.*uint8 / 255"):
        nl_means((img * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\), \(C, H, W\) or \(B, C, H, W\)"):
        nl_means(torch.rand(1, 1, 1, 16, 16))
    bad = img.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        nl_means(bad)
    with pytest.raises(ValueError, match="need an image larger than"):
        nl_means(img, search_window=31)
    with pytest.raises(ValueError, match="patch_size must be a positive odd int"):
        nl_means(img, patch_size=4)
    with pytest.raises(ValueError, match="h must be > 0"):
        nl_means(img, sigma=0.1, h=0.0)
    with pytest.raises(ValueError, match="centre_weight must be 'max' or 'one'"):
        nl_means(img, centre_weight="zero")
    with pytest.raises(ValueError, match="video must be"):
        nl_means_video(img)
