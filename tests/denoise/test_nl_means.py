import math

import numpy as np
import pytest
import torch

from nonlocalnet.denoise import estimate_sigma, nl_means, nl_means_video, psnr
from nonlocalnet.errors import InvalidValueError


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
    kw = {"patch_weights": "uniform", "centre_weight": "one"}
    out = nl_means(noisy, sigma=0.1, h=0.12, patch_size=5, fully_nonlocal=True, **kw)
    # against the explicit all-pairs weights exp(-d2 / h^2)
    x = noisy[None, None].double()
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), 5)[0].T
    d2 = torch.cdist(patches, patches).square() / 25
    w = torch.exp(-d2 / 0.12**2)
    ref = (w @ x.flatten()) / w.sum(1)
    torch.testing.assert_close(out.double().flatten(), ref, atol=1e-4, rtol=1e-4)
    assert psnr(out, clean) > psnr(noisy, clean) + 3
    assert (
        psnr(nl_means(noisy, sigma=0.1, h=0.12, patch_size=5, fully_nonlocal=True), clean)
        > psnr(noisy, clean) + 3
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    ("weights", "centre"), [("gaussian", "max"), ("uniform", "max"), ("gaussian", "one"), ("uniform", "one")]
)
def test_fully_nonlocal_honours_patch_and_centre_weights(channels, weights, centre):
    """Issue 17 item 13: the whole image is the search window, with the windowed mode's patch
    weighting and centre rule; sigma = 0, so the 2 sigma^2 clamp (not applied here) is moot."""
    gen = torch.Generator().manual_seed(5)
    img = torch.rand(channels, 7, 8, generator=gen, dtype=torch.float64)
    kw = {"patch_weights": weights, "centre_weight": centre}
    out = nl_means(img, sigma=0.0, h=0.2, patch_size=5, search_window=3, fully_nonlocal=True, **kw)
    ref = brute_force(img[None], 0.0, 0.2, 5, 15, weights=weights, centre=centre)[0]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    f32 = nl_means(img.float(), sigma=0.0, h=0.2, patch_size=5, search_window=3, fully_nonlocal=True, **kw)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), ref, atol=1e-5, rtol=1e-5)


def test_fully_nonlocal_needs_no_search_window_fit():
    img = torch.rand(2, 6, 6, dtype=torch.float64)
    out = nl_means(img, sigma=0.1, h=0.2, patch_size=3, fully_nonlocal=True)  # search_window 21 unused
    assert out.shape == img.shape
    with pytest.raises(ValueError, match="patch_size 13 needs an image larger than 6 pixels"):
        nl_means(img, sigma=0.1, h=0.2, patch_size=13, fully_nonlocal=True)


def _noise_free(size=16):
    img = torch.full((1, size, size), 0.25)
    img[:, 4:12, 6:14] = 0.75  # edges on even rows / columns: every diagonal Haar coefficient is 0
    return img


@pytest.mark.parametrize("fully", [False, True])
def test_noise_free_image_comes_back_unchanged(fully):
    """Issue 17 item 14: estimated sigma 0 gives the default h 0; such an image is returned as it
    is (the h -> 0 limit), per image of a batch; an explicit h = 0 stays an error."""
    clean = _noise_free()
    assert estimate_sigma(clean).item() == 0
    kw = {"patch_size": 3, "search_window": 5, "fully_nonlocal": fully}
    out = nl_means(clean, **kw)
    assert out is not clean and torch.equal(out, clean)
    gen = torch.Generator().manual_seed(6)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    batch = torch.stack([clean, noisy])
    out = nl_means(batch, **kw)
    assert torch.equal(out[0], clean)
    torch.testing.assert_close(out[1], nl_means(noisy, **kw))
    assert not torch.allclose(out[1], noisy)
    assert torch.equal(nl_means(clean, sigma=0.0, **kw), clean)  # sigma 0 given, h not: the same
    with pytest.raises(ValueError, match="h must be > 0"):
        nl_means(clean, h=0.0, **kw)
    with pytest.raises(ValueError, match="h must be > 0"):
        nl_means(batch, sigma=0.0, h=0.0, **kw)


def test_noise_free_video_comes_back_unchanged():
    clean = _noise_free()[None].expand(4, 1, 16, 16).contiguous()  # (T, C, H, W)
    kw = {"patch_size": 3, "search_window": 5, "temporal_window": 3}
    assert torch.equal(nl_means_video(clean, **kw), clean)
    gen = torch.Generator().manual_seed(7)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    out = nl_means_video(torch.stack([noisy, clean]), **kw)
    assert torch.equal(out[1], clean)
    torch.testing.assert_close(out[0], nl_means_video(noisy, **kw))
    with pytest.raises(ValueError, match="h must be > 0"):
        nl_means_video(clean, h=0.0, **kw)


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


def test_numpy_images_in_and_out_with_the_same_checks():
    """scikit-image and OpenCV users pass NumPy arrays, colour channels last."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    chw = (torch.rand(3, 24, 24, generator=gen) * 0.5 + 0.25).double()
    want = nl_means(chw, sigma=0.1, patch_size=3, search_window=5)
    hwc = chw.permute(1, 2, 0).numpy()
    got = nl_means(hwc, sigma=0.1, patch_size=3, search_window=5, channel_axis=-1)
    assert isinstance(got, np.ndarray) and got.shape == hwc.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), rtol=0, atol=1e-12)
    gray = nl_means(hwc[..., 0].astype(np.float32), sigma=0.1, patch_size=3, search_window=5)
    assert isinstance(gray, np.ndarray) and gray.dtype == np.float32
    np.testing.assert_allclose(
        gray, nl_means(chw[0].float(), sigma=0.1, patch_size=3, search_window=5).numpy()
    )
    batch = np.stack([hwc, hwc[::-1]])  # (B, H, W, C), a negative-stride view included
    assert nl_means(batch, sigma=0.1, patch_size=3, search_window=5, channel_axis=-1).shape == batch.shape
    with pytest.raises(ValueError, match="needs channel_axis"):
        nl_means(hwc)  # (24, 24, 3) would otherwise be read as 24 channels
    with pytest.raises(TypeError, match="floating point"):
        nl_means((hwc * 255).astype(np.uint8), channel_axis=-1)
    with pytest.raises(ValueError, match="contains NaN"):
        nl_means(np.full((16, 16), np.nan))
    with pytest.raises(TypeError, match="torch.Tensor or a NumPy array, got list"):
        nl_means([[0.5] * 16] * 16)
    with pytest.raises(ValueError, match="channel_axis 3 is not an axis"):
        nl_means(hwc, channel_axis=3)


def test_numpy_video_and_one_set_of_checks_for_images_and_videos():
    import numpy as np

    from nonlocalnet.denoise import nl_means_video

    gen = torch.Generator().manual_seed(4)
    tchw = (torch.rand(4, 1, 20, 20, generator=gen) * 0.5 + 0.25).double()
    want = nl_means_video(tchw, sigma=0.1, patch_size=3, search_window=5)
    got = nl_means_video(
        tchw.permute(0, 2, 3, 1).numpy(), sigma=0.1, patch_size=3, search_window=5, channel_axis=-1
    )
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-12)
    for fn, x in ((nl_means, tchw[0]), (nl_means_video, tchw)):
        with pytest.raises(TypeError, match="must be floating point"):
            fn((x * 255).to(torch.uint8))
        with pytest.raises(ValueError, match="patch_size must be a positive odd int"):
            fn(x, patch_size=4)
        with pytest.raises(ValueError, match="tile_size must be a positive int"):
            fn(x, tile_size=0)
        with pytest.raises(
            ValueError, match=r"patch_size 7 \+ search_window 21 need (an image|frames) larger"
        ):
            fn(x[..., :12, :12])
    with pytest.raises(
        ValueError, match=r"video must be \(T, C, H, W\) or \(B, T, C, H, W\), got shape \(20, 20\)"
    ):
        nl_means_video(tchw[0, 0])


@pytest.mark.parametrize("h", [None, 0.1])
def test_nl_means_refuses_a_negative_sigma(h):
    """``nl_means(x, sigma=-1)`` said "h must be > 0, got [-0.8]" (the default h of a sigma the
    user gave), and with an explicit h a negative sigma was used as it was."""
    with pytest.raises(InvalidValueError, match=r"sigma must be >= 0, got \[-1.0\]"):
        nl_means(torch.rand(8, 8), sigma=-1.0, h=h, patch_size=3, search_window=5)
