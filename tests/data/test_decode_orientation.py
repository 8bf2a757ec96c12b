"""Display orientation: the display matrix (phones' rotation) and the sample aspect ratio."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from coded_video import H, W, set_display_matrix

from nonlocalnet.data import (
    VideoDecodeError,
    VideoReader,
    check_dataset,
    probe_video,
    read_all_frames,
    read_frames,
)
from nonlocalnet.data import decode as D

ONE, FIX = 1 << 16, 1 << 30  # 16.16 and 2.30 fixed point


def matrix(a: int, b: int, c: int, d: int, tx: int = 0, ty: int = 0) -> tuple[int, ...]:
    """A display matrix in FFmpeg's layout from its 2x2 part (and translation, in pixels)."""
    return (a * ONE, b * ONE, 0, c * ONE, d * ONE, 0, tx * ONE, ty * ONE, FIX)


def displayed(coded: np.ndarray, m: tuple[int, ...]) -> np.ndarray:
    """What the matrix means, from its definition (a display point is ``(x y 1) @ m``): every
    coded pixel moved to where the matrix takes it (``(N, H, W, 3)`` frames)."""
    a, b, c, d = (v / ONE for v in (m[0], m[1], m[3], m[4]))
    n, h, w, _ = coded.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    xd, yd = x * a + y * c, x * b + y * d
    xi, yi = (np.rint(v - v.min()).astype(int) for v in (xd, yd))  # pixel centres: whole steps apart
    out = np.zeros((n, yi.max() + 1, xi.max() + 1, 3), coded.dtype)
    out[:, yi, xi] = coded
    return out


# name: (matrix, clockwise rotation, mirrored) -- the eight orientations; ffmpeg's names
ORIENTATIONS = {
    "identity": (matrix(1, 0, 0, 1), 0, False),
    "turned 90 clockwise (phone portrait)": (matrix(0, 1, -1, 0, tx=H), 90, False),
    "turned 180 (upside down)": (matrix(-1, 0, 0, -1, tx=W, ty=H), 180, False),
    "turned 90 counter-clockwise": (matrix(0, -1, 1, 0, ty=W), 270, False),
    "hflip": (matrix(-1, 0, 0, 1, tx=W), 0, True),
    "vflip": (matrix(1, 0, 0, -1, ty=H), 180, True),
    "transpose (cclock_flip)": (matrix(0, 1, 1, 0), 90, True),
    "anti-transpose (clock_flip)": (matrix(0, -1, -1, 0, tx=H, ty=W), 270, True),
}


@pytest.fixture
def phone_video(make_video):
    """Recorded in landscape sensor order, held upright: the MP4 says "turn 90 clockwise"."""
    path = make_video("portrait.mp4", 12)
    return set_display_matrix(path, ORIENTATIONS["turned 90 clockwise (phone portrait)"][0])


def test_a_phone_video_comes_out_upright(phone_video, codes):
    info = probe_video(phone_video)
    assert (info.width, info.height, info.rotation, info.flip, info.rotated) == (W, H, 90, False, True)
    assert (info.display_width, info.display_height) == (H, W)  # a portrait video
    frames = read_frames(phone_video, [1, 2, 5])
    assert frames.shape == (3, W, H, 3)
    # frame 1 marks the coded top-left block only; turned clockwise it is the top-right corner
    red = frames[0, ..., 0].float()
    corners = {"top-right": red[:8, -8:], "top-left": red[:8, :8], "bottom-left": red[-8:, :8]}
    assert corners["top-right"].mean() > 200 and corners["top-left"].mean() < 60
    assert corners["bottom-left"].mean() < 60
    # turned back, the frames are the coded ones (their index codes read again)
    assert codes(torch.rot90(frames, 1, dims=(1, 2))) == [1, 2, 5]
    assert read_all_frames(phone_video).shape == (12, W, H, 3)
    assert read_frames(phone_video, []).shape == (0, W, H, 3)


@pytest.mark.parametrize("m,rotation,flip", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
def test_every_display_matrix_is_applied_as_it_reads(make_video, m, rotation, flip):
    path = set_display_matrix(make_video("v.mp4", 6, gop=3), m)
    info = probe_video(path, exact=True)
    assert (info.rotation, info.flip) == (rotation, flip)
    coded = read_all_frames(path, autorotate=False)  # ffmpeg -noautorotate: the frames as coded
    assert coded.shape == (6, H, W, 3)
    want = torch.from_numpy(displayed(coded.numpy(), m))
    assert torch.equal(read_all_frames(path), want)
    assert torch.equal(read_frames(path, [5, 0, 3], info=info), want[[5, 0, 3]])  # seeking reads too
    assert read_frames(path, [4], info=info).shape[1:3] == info.frame_size()


@pytest.mark.parametrize("sar,shape", [(Fraction(2), (H, 2 * W)), (Fraction(1, 2), (2 * H, W))])
def test_non_square_pixels_are_resampled_to_the_display_aspect(make_video, codes, sar, shape):
    path = make_video("anamorphic.mkv", 8, sar=sar)
    info = probe_video(path)
    assert info.sample_aspect_ratio == sar and (info.width, info.height) == (W, H)
    assert (info.display_height, info.display_width) == shape
    frames = read_frames(path, [0, 3, 7], info=probe_video(path, exact=True))
    assert frames.shape == (3, *shape, 3) and codes(frames) == [0, 3, 7]
    coded = read_frames(path, [0, 3, 7], square_pixels=False)  # what ffmpeg, PySlowFast, mmaction2 see
    assert coded.shape == (3, H, W, 3)
    # one side is enlarged (no pixel dropped): close to each coded pixel repeated
    axis = 2 if sar > 1 else 1
    stretched = coded.repeat_interleave(2, dim=axis).float()
    assert (frames.float() - stretched).abs().mean() < 8


def test_sample_aspect_ratio_applies_before_the_rotation(make_video):
    path = set_display_matrix(make_video("both.mp4", 4, sar=Fraction(2)), matrix(0, 1, -1, 0, tx=H))
    info = probe_video(path)
    assert info.frame_size() == (2 * W, H)  # 128 x 48 pixels, turned: 48 wide, 128 tall
    assert read_frames(path, [0, 1]).shape == (2, 2 * W, H, 3)
    assert read_frames(path, [0], square_pixels=False).shape == (1, W, H, 3)
    assert read_frames(path, [0], autorotate=False).shape == (1, H, 2 * W, 3)


def test_an_odd_angle_is_reported_and_refused(make_video):
    c, s = round(np.cos(np.pi / 6) * ONE), round(np.sin(np.pi / 6) * ONE)
    path = set_display_matrix(make_video("tilted.mp4", 4), (c, s, 0, -s, c, 0, 0, 0, FIX))
    info = probe_video(path)
    assert info.rotation == 30 and info.rotated
    with pytest.raises(VideoDecodeError, match=r"30 degrees.*autorotate=False \(data.autorotate: false\)"):
        read_frames(path, [0])
    assert read_frames(path, [0], autorotate=False).shape == (1, H, W, 3)


def test_an_implausible_sample_aspect_ratio_is_refused(make_video):
    path = make_video("broken.mkv", 4, sar=Fraction(9))
    assert probe_video(path).sample_aspect_ratio == 9
    with pytest.raises(
        VideoDecodeError, match=r"9:1 would stretch 64x48 frames to 576x48.*square_pixels=False"
    ):
        read_frames(path, [0])
    assert read_frames(path, [0], square_pixels=False).shape == (1, H, W, 3)


def test_a_frame_turned_otherwise_than_the_first_is_an_error(phone_video, monkeypatch):
    info = probe_video(phone_video, exact=True)
    monkeypatch.setattr(D, "_display_matrix", lambda frame: None)  # frames no longer turned
    with pytest.raises(VideoDecodeError, match=r"another display orientation \(not turned\) than the first "):
        read_frames(phone_video, [0, 3], info=info)
    assert read_frames(phone_video, [0, 3], info=info, autorotate=False).shape == (2, H, W, 3)


def test_settings_must_be_bools(phone_video):
    with pytest.raises(TypeError, match="autorotate must be a bool, got str"):
        VideoReader(phone_video, autorotate="no")
    with pytest.raises(TypeError, match="square_pixels must be a bool, got int"):
        read_frames(phone_video, [0], square_pixels=0)


def test_check_data_reports_rotated_and_anamorphic_videos(phone_video, make_video, tmp_path, capsys):
    from nonlocalnet.cli import main

    plain, wide = make_video("plain.mp4", 4), make_video("wide.mkv", 4, sar=Fraction(4, 3))
    (tmp_path / "list.txt").write_text("plain.mp4 0\nportrait.mp4 1\nwide.mkv 0\n")
    assert main(["check-data", "--list", str(tmp_path / "list.txt"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"ROTATED {phone_video}: turned 90 degrees clockwise for display" in out
    assert f"ASPECT {wide}: sample aspect ratio 4:3" in out
    assert "display orientation: 1 rotated by a display matrix, 1 with non-square pixels" in out
    report = check_dataset([plain, phone_video, wide], progress=False)
    assert report.ok and [(n.index, n.path) for n in report.rotated] == [(1, str(phone_video))]
    assert (
        "turned 90 degrees clockwise for display: coded 64x48, read upright as 48x64"
        in report.rotated[0].detail
    )
    assert [n.index for n in report.anamorphic] == [2]
    assert (
        "sample aspect ratio 4:3: coded 64x48, read with square pixels as 85x48"
        in report.anamorphic[0].detail
    )
    summary = report.to_dict()
    assert (summary["rotated_count"], summary["anamorphic_count"]) == (1, 1)


TINY_MODEL = {
    "name": "c2d_r50",
    "num_classes": 2,
    "overrides": {
        "stem_width": 8,
        "conv1_temporal_stride": 1,
        "pool1_temporal": 1,
        "pool1_temporal_stride": 1,
        "pool2_temporal": 0,
        "stages": [{"depth": 1, "width": 4, "stride": 1, "temporal_a": [1], "temporal_b": [1]}],
    },
}
TINY_DATA = {"clip_length": 2, "stride": 2, "num_clips": 2, "crop": 28, "test_short": 32, "test_crop": 32}


@pytest.mark.parametrize("autorotate", [True, False])
def test_the_data_settings_reach_datasets_and_predict(phone_video, monkeypatch, autorotate):
    import importlib

    from nonlocalnet.data import VideoSample, test_clip_indices, test_views
    from nonlocalnet.engine.config import config_from_dict
    from nonlocalnet.engine.setup import build_dataset, build_model_from_config

    P = importlib.import_module("nonlocalnet.engine.predict")  # the module (engine.predict: a function)
    cfg = config_from_dict({"model": TINY_MODEL, "data": {**TINY_DATA, "autorotate": autorotate}})
    dataset = build_dataset(cfg.data, [VideoSample(str(phone_video), 0)], train=False, seed=0)
    indices = test_clip_indices(12, 2, 2, 2)[1]
    frames = read_frames(phone_video, indices, autorotate=autorotate)
    assert frames.shape[1:3] == ((W, H) if autorotate else (H, W))
    assert torch.equal(dataset[1]["video"], test_views(frames, dataset.transform))

    shapes = []

    def reading(*args, **kwargs):
        out = read_frames(*args, **kwargs)
        shapes.append(tuple(out.shape[1:3]))
        return out

    monkeypatch.setattr(P, "read_frames", reading)
    P.predict_video(build_model_from_config(cfg.model), phone_video, cfg, ["a", "b"])
    assert shapes == [frames.shape[1:3]] * 2
