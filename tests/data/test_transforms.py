import pytest
import torch

from nonlocalnet.data import transforms as T


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ramp(t=2, h=48, w=64):
    """``(3, T, H, W)``: channel 0 = x, channel 1 = y, channel 2 = frame index."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    frames = [torch.stack([x, y, torch.full_like(x, float(i))]) for i in range(t)]
    return torch.stack(frames, dim=1)


def test_to_float_cthw():
    frames = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    video = T.to_float_cthw(frames)
    assert video.shape == (3, 4, 6, 8) and video.dtype == torch.float32
    assert torch.equal(video[1, 2], frames[2, ..., 1].float())
    with pytest.raises(TypeError, match="uint8"):
        T.to_float_cthw(frames.float())
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        T.to_float_cthw(frames[..., :2])


@pytest.mark.parametrize("hw,out", [((48, 64), (36, 48)), ((64, 48), (48, 36)), ((20, 30), (36, 54))])
def test_resize_short_side(hw, out):
    video = torch.full((3, 2, *hw), 100.0)
    res = T.resize_short_side(video, 36)
    assert res.shape == (3, 2, *out)
    assert torch.allclose(res, torch.tensor(100.0))  # a constant stays constant, values in range
    assert T.resize_short_side(video, min(hw)) is video


def test_resize_short_side_antialiases_when_shrinking():
    stripes = torch.zeros(3, 1, 64, 64)
    stripes[..., ::2] = 255.0  # 1-pixel stripes
    small = T.resize_short_side(stripes, 16)
    assert torch.allclose(small[..., 1:-1], torch.tensor(127.5), atol=1.0)  # averaged, not aliased


def test_random_short_side_scale_range():
    video = torch.rand(3, 1, 24, 32) * 255
    sizes = {T.random_short_side_scale(video, 10, 13, generator=gen(s)).shape[-2] for s in range(60)}
    assert sizes == {10, 11, 12, 13}


def test_random_crop_and_center_crop():
    video = ramp()
    seen = set()
    for s in range(40):
        crop = T.random_crop(video, 16, generator=gen(s))
        assert crop.shape == (3, 2, 16, 16)
        y, x = int(crop[1, 0, 0, 0]), int(crop[0, 0, 0, 0])
        assert torch.equal(crop, video[..., y : y + 16, x : x + 16])
        seen.add((y, x))
    assert len(seen) > 30
    c = T.center_crop(video, 16)
    assert (int(c[1, 0, 0, 0]), int(c[0, 0, 0, 0])) == (16, 24)
    with pytest.raises(ValueError, match="larger than the frame 48x64"):
        T.random_crop(video, 49, generator=gen())


def test_spatial_crops_along_the_long_side():
    land = ramp(h=48, w=100)  # landscape: left / centre / right
    crops = T.spatial_crops(land, 48)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 26, 52] and all(c.shape[-2:] == (48, 48) for c in crops)
    assert int(crops[2][0, 0, 0, -1]) == 99  # the right crop ends at the right edge
    port = ramp(h=100, w=48)  # portrait: top / centre / bottom
    crops = T.spatial_crops(port, 48)
    assert [int(c[1, 0, 0, 0]) for c in crops] == [0, 26, 52]
    assert all(int(c[0, 0, 0, 0]) == 0 for c in crops)
    (centre,) = T.spatial_crops(land, 48, num_crops=1)
    assert int(centre[0, 0, 0, 0]) == 26
    assert [int(c[0, 0, 0, 0]) for c in T.spatial_crops(land, 40, num_crops=5)] == [0, 15, 30, 45, 60]
    assert int(T.spatial_crops(land, 40)[1][1, 0, 0, 0]) == 4  # centred on the short side


def test_random_horizontal_flip():
    video = ramp()
    assert torch.equal(T.random_horizontal_flip(video, 1.0, generator=gen()), video.flip(-1))
    assert T.random_horizontal_flip(video, 0.0, generator=gen()) is video
    flips = [bool(T.random_horizontal_flip(video, generator=gen(s))[0, 0, 0, 0] == 63) for s in range(200)]
    assert 70 < sum(flips) < 130


def test_normalize():
    video = torch.tensor([114.75, 172.125, 57.375]).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    assert torch.allclose(T.normalize(video)[:, 0, 0, 0], torch.tensor([0.0, 1.0, -1.0]))
    out = T.normalize(video, mean=(114.75, 172.125, 57.375), std=[1.0, 2.0, 4.0])
    assert torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match="per-channel"):
        T.normalize(video, mean=(1.0, 2.0))


def test_train_transform():
    cfg = T.TransformConfig(min_short=40, max_short=50, crop=32)
    frames = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    out = T.train_transform(frames, cfg, generator=gen(3))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    assert out.min() >= -114.75 / 57.375 - 1e-4 and out.max() <= (255 - 114.75) / 57.375 + 1e-4
    assert torch.equal(out, T.train_transform(frames, cfg, generator=gen(3)))
    assert not torch.equal(out, T.train_transform(frames, cfg, generator=gen(4)))


def test_train_transform_paper_sizes():
    frames = torch.randint(0, 256, (2, 256, 340, 3), dtype=torch.uint8)
    assert T.train_transform(frames, T.TransformConfig(), generator=gen()).shape == (3, 2, 224, 224)


def test_test_views():
    cfg = T.TransformConfig(test_short=32, test_crop=32, num_crops=3)
    frames = torch.zeros(4, 48, 96, 3, dtype=torch.uint8)
    frames[..., :32, 0] = 255  # left third red
    views = T.test_views(frames, cfg)
    assert views.shape == (3, 3, 4, 32, 32)
    red = views[:, 0].mean(dim=(1, 2, 3))
    assert red[0] > red[1] > red[2]  # left, centre, right
    assert torch.allclose(views[2, 0], torch.tensor(-114.75 / 57.375))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="crop"):
        T.TransformConfig(crop=300)
    with pytest.raises(ValueError, match="test_crop"):
        T.TransformConfig(test_crop=300)
    with pytest.raises(ValueError, match="min_short"):
        T.TransformConfig(min_short=330)
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        T.resize_short_side(torch.zeros(2, 1, 8, 8), 4)
    with pytest.raises(TypeError, match="floating-point"):
        T.center_crop(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), 4)
