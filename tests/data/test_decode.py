import random

import pytest
import torch

from nonlocalnet.data import VideoDecodeError, probe_video, read_all_frames, read_frames
from nonlocalnet.data import decode as D

N = 48

FORMATS = {
    "mp4 h264": ("v.mp4", {}),
    "mkv h264 (no frame count in the header)": ("v.mkv", {}),
    "avi mpeg4": ("v.avi", {"codec": "mpeg4"}),
    "webm vp9": ("v.webm", {"codec": "libvpx-vp9"}),
    "mpeg-ts (first pts not 0)": ("v.ts", {"fmt": "mpegts"}),
    "mov h264": ("v.mov", {}),
}


@pytest.fixture
def decoded(monkeypatch):
    """Counts the frames the decoder outputs (and the sequential fallbacks)."""
    stats = {"frames": 0, "sequential": 0}
    frames, sequential = D.VideoReader._frames, D.VideoReader._read_sequential

    def counting_frames(self):
        for f in frames(self):
            stats["frames"] += 1
            yield f

    def counting_sequential(self, *a):
        stats["sequential"] += 1
        return sequential(self, *a)

    monkeypatch.setattr(D.VideoReader, "_frames", counting_frames)
    monkeypatch.setattr(D.VideoReader, "_read_sequential", counting_sequential)
    return stats


@pytest.mark.parametrize("name,options", FORMATS.values(), ids=FORMATS.keys())
def test_probe_and_read_any_container(make_video, codes, decoded, name, options):
    path = make_video(name, N, **options)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (N, 25.0, 64, 48)
    assert info.path == str(path) and info.codec in ("h264", "mpeg4", "vp9")
    everything = read_all_frames(path)
    assert everything.shape == (N, 48, 64, 3) and everything.dtype == torch.uint8
    assert codes(everything) == list(range(N))
    rng = random.Random(0)
    for _ in range(8):
        idx = [rng.randrange(N) for _ in range(rng.randrange(1, 10))]
        assert torch.equal(read_frames(path, idx, info=info), everything[idx])
    assert decoded["sequential"] == 0  # timestamps located every frame


def test_read_frames_exact_frames_bit_for_bit(make_video, codes):
    path = make_video("v.mp4", 60, gop=8)
    everything = read_all_frames(path)
    rng = random.Random(1)
    sets = [
        [0],
        [59],
        list(range(60)),
        list(range(10, 42, 2)),  # a stride-2 clip
        [58, 59, 0, 1, 2],  # wrapped around
        [7, 7, 3, 3, 50, 7],  # duplicates, any order
        list(range(57, 60)) + list(range(0, 29, 2)),
    ]
    sets += [[rng.randrange(60) for _ in range(rng.randrange(1, 20))] for _ in range(20)]
    sets += [sorted(rng.sample(range(60), 6)) for _ in range(5)]
    for idx in sets:
        got = read_frames(path, idx)
        assert got.shape == (len(idx), 48, 64, 3)
        assert codes(got) == idx
        assert torch.equal(got, everything[idx])


def test_read_frames_seeks_instead_of_decoding_from_the_start(make_video, decoded):
    path = make_video("long.mp4", 120, gop=8)
    info = probe_video(path, exact=True)  # the index: packets demuxed, the first frames decoded once
    assert decoded["frames"] <= 12
    decoded["frames"] = 0
    read_frames(path, list(range(100, 108)), info=info)
    assert decoded["frames"] <= 8 + 8  # the GOP before the clip at most, not the 100 before it
    decoded["frames"] = 0
    read_frames(path, [2, 3, 117, 118], info=info)  # two runs: two seeks
    assert decoded["frames"] <= 2 * 16
    decoded["frames"] = 0
    read_all_frames(path)
    assert decoded["frames"] == 120


def test_variable_frame_rate_seeks_by_timestamp_rank(make_video, codes, decoded):
    pts = [i * 40 + (i % 3) * 13 for i in range(N)]  # irregular timestamps
    path = make_video("vfr.mkv", N, pts=pts)
    info = probe_video(path, exact=True)
    assert info.num_frames == N and info.index.seekable
    everything = read_all_frames(path)
    idx = [30, 31, 32, 5]
    got = read_frames(path, idx, info=info)
    assert codes(got) == idx and torch.equal(got, everything[idx])
    assert decoded["sequential"] == 0


def test_missing_timestamps_fall_back_to_counting(make_video, codes, monkeypatch, decoded):
    path = make_video("v.mp4", N)
    packets = D.VideoReader._packets

    def no_pts(self):
        return [(None, dts, key) for _, dts, key in packets(self)]

    monkeypatch.setattr(D.VideoReader, "_packets", no_pts)
    info = probe_video(path, exact=True)
    assert info.num_frames == N and not info.index.seekable
    assert "no presentation timestamps" in info.slow_reason
    assert codes(read_frames(path, [40, 2, 41], info=info)) == [40, 2, 41]
    assert decoded["sequential"] == 1
    with pytest.raises(VideoDecodeError, match=f"frame {N} does not exist"):
        read_frames(path, [N], info=info)


def test_frames_beyond_the_end_or_truncated_are_errors(make_video, tmp_path):
    path = make_video("v.mp4", N)
    with pytest.raises(VideoDecodeError, match=r"frame 48 does not exist \(the video has 48 frames") as err:
        read_frames(path, [46, 47, 48])
    assert err.value.path == str(path) and "48" in err.value.reason and str(path) in str(err.value)
    # moov atom first: the header survives the cut, the late frames do not
    whole = make_video("fast.mp4", N, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert probe_video(cut).num_frames == N  # the header alone does not show it
    for idx in ([0, 1], [N - 1]):  # the index does: packets are missing
        with pytest.raises(VideoDecodeError, match=f"truncated: the header lists {N} frames, the file holds"):
            read_frames(cut, idx)
    with pytest.raises(VideoDecodeError, match="truncated"):
        probe_video(cut, exact=True)


def test_unreadable_files(make_video, tmp_path):
    import av

    cases = {
        "missing.mp4": "file not found",
        "empty.mp4": "empty file",
        "random.mp4": "cannot open",
        "cut.mp4": "cannot open",  # moov atom at the end: gone
        "audio.wav": "no video stream",
    }
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    whole = make_video("whole.mp4", N).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with av.open(str(tmp_path / "audio.wav"), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(torch.zeros(1, 800, dtype=torch.int16).numpy(), format="s16")
        frame.sample_rate = 8000
        for p in (*s.encode(frame), *s.encode()):
            c.mux(p)
    for name, reason in cases.items():
        for fn in (probe_video, read_all_frames, lambda p: read_frames(p, [0])):
            with pytest.raises(VideoDecodeError, match=reason) as err:
                fn(tmp_path / name)
            assert err.value.path == str(tmp_path / name)


def test_index_validation_and_empty_request(make_video):
    path = make_video("v.mp4", 12)
    assert read_frames(path, []).shape == (0, 48, 64, 3)
    assert read_frames(path, torch.tensor([3, 1])).shape[0] == 2
    with pytest.raises(ValueError, match=">= 0"):
        read_frames(path, [-1])
    with pytest.raises(TypeError, match="integers"):
        read_frames(path, [1.0])


def test_decode_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "empty file (0 bytes)")))
    assert (err.path, err.reason) == ("/x.mp4", "empty file (0 bytes)") and "/x.mp4" in str(err)
