"""Frame exactness on every common encoding: each seeking read is compared, frame by frame, with
the sequential decode of the same file, by the index drawn into each source frame."""

from __future__ import annotations

import random

import pytest
import torch
from video_matrix import cases, remux, write_case

from nonlocalnet.data import VideoDecodeError, VideoReader, probe_video, read_all_frames, read_frames
from nonlocalnet.data import decode as D

CASES = cases()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix")


def _read_sets(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    sets = [[0], [n - 1], [n // 2, n // 2 + 1], list(range(n - 6, n)), list(range(3, n, 4))]
    sets += [sorted(rng.sample(range(n), 4)) for _ in range(4)]
    sets += [[rng.randrange(n) for _ in range(rng.randrange(1, 6))] for _ in range(6)]
    return sets


def test_the_matrix_covers_the_issue():
    ids = {c.id for c in CASES}
    assert len(CASES) >= 60
    for codec in ("libx264", "libx265", "mpeg4", "libvpx-vp9", "mjpeg", "libsvtav1"):
        assert any(c.codec == codec for c in CASES)
    for container in ("mp4", "mkv", "avi", "webm", "mov", "ts"):
        assert any(c.container == container for c in CASES)
    for gop in ("b-frames", "b-pyramid", "open-gop", "long-gop", "all-intra"):
        assert any(c.gop == gop for c in CASES)
    for timing in ("cfr25", "vfr", "offset", "ntsc", "film"):
        assert any(c.timing == timing for c in CASES)
    assert "mpeg4-b-frames-avi-cfr25" in ids and "libx264-b-pyramid-mkv-vfr" in ids


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_seeking_reads_equal_the_sequential_decode(case, folder, codes):
    if not _encoder_available(case.codec):
        pytest.skip(f"PyAV's FFmpeg has no {case.codec} encoder")
    path = write_case(case, folder)
    sequential = read_all_frames(path)
    seq_codes = codes(sequential)
    assert seq_codes == list(range(case.frames)), "the sequential decode lost or reordered frames"

    info = probe_video(path, exact=True)
    assert info.exact and info.num_frames == len(sequential)
    for k, idx in enumerate(_read_sets(info.num_frames, seed=hash(case.id) % 1000)):
        # a fresh reader per read, sharing the index as a data set's workers do
        with VideoReader(path, info=info) as reader:
            got = reader.read(idx)
            info = reader.info()
        assert codes(got) == [seq_codes[i] for i in idx], f"read {k}: {idx}"
        assert torch.equal(got, sequential[idx])
    # without a shared index, too
    idx = [case.frames - 1, 1, case.frames // 3]
    assert codes(read_frames(path, idx)) == idx


def _encoder_available(codec: str) -> bool:
    import av

    return codec in av.codecs_available


def test_which_encodings_seek(folder):
    """Seeking is kept wherever the container's timestamps give the presentation order; H.264 with
    B-frames in AVI (decode-order timestamps) is read by counting, and says why."""
    by_id = {c.id: c for c in CASES}
    seekable = [
        "mpeg4-b-frames-avi-cfr25",
        "libx264-b-pyramid-mkv-vfr",
        "libx265-open-gop-mp4-film",
        "libx264-b-pyramid-ts-offset",
        "libvpx-vp9-altref-webm-vfr",
        "mjpeg-all-intra-avi-cfr25",
    ]
    for name in seekable:
        info = probe_video(write_case(by_id[name], folder), exact=True)
        assert info.index.seekable and info.slow_reason is None, name
    info = probe_video(write_case(by_id["libx264-b-pyramid-avi-cfr25"], folder), exact=True)
    assert not info.index.seekable and "order" in info.slow_reason


def test_seeking_decodes_only_the_gop_before_the_clip(folder, monkeypatch):
    by_id = {c.id: c for c in CASES}
    decoded = {"n": 0}
    frames = D.VideoReader._frames

    def counting(self):
        for f in frames(self):
            decoded["n"] += 1
            yield f

    for name in ("mpeg4-b-frames-avi-cfr25", "libx264-b-pyramid-mkv-vfr", "libx265-open-gop-mp4-film"):
        path = write_case(by_id[name], folder)
        info = probe_video(path, exact=True)
        monkeypatch.setattr(D.VideoReader, "_frames", counting)
        decoded["n"] = 0
        read_frames(path, [36, 37, 38], info=info)
        assert decoded["n"] <= 3 + 12 + 4, name  # one GOP (+ leading pictures), not the 36 before it
        monkeypatch.undo()


def test_the_mpeg4_avi_of_public_data_sets(folder, codes):
    """The reported case: MPEG-4 Part 2 with B-frames in AVI (Xvid/DivX, as UCF-101 and HMDB-51),
    whose first pts is 1 while the stream starts at 0: frame 149 was read as 148."""
    from video_matrix import Case

    path = write_case(Case("mpeg4", "avi", "b-frames", "cfr25", frames=160), folder)
    assert codes(read_frames(path, [149, 53, 100])) == [149, 53, 100]


PAUSE = [i * 40 for i in range(30)] + [3200 + i * 40 for i in range(30)]  # a 2 s pause mid-clip


def test_variable_frame_rate_counts_are_true_and_flagged(tmp_path, codes):
    """The reported case: a VFR Matroska whose header estimate (duration x fps) is wrong."""
    from coded_video import write_video

    path = write_video(tmp_path / "pause.mkv", 60, pts=PAUSE)
    header = probe_video(path)
    assert not header.exact and header.num_frames == header.header_frames == 110  # 4.4 s x 25 fps
    info = probe_video(path, exact=True)
    assert info.exact and info.num_frames == 60 and info.corrected and info.index.seekable
    assert codes(read_frames(path, [57, 58, 59], info=info)) == [57, 58, 59]
    with pytest.raises(VideoDecodeError, match=r"frame 60 does not exist \(the video has 60 frames"):
        read_frames(path, [59, 60], info=info)
    with pytest.raises(VideoDecodeError, match="frame 109 does not exist"):
        read_frames(path, [109])  # what the header promised


def test_a_vfr_video_is_not_broken_in_a_data_set(tmp_path, codes):
    """Clips near the end of a video whose header over-counts decode fine (the data set counts)."""
    from coded_video import write_video

    from nonlocalnet.data import ClipSampling, TransformConfig, VideoClipDataset, check_dataset

    path = write_video(tmp_path / "pause.mkv", 60, pts=PAUSE)
    ds = VideoClipDataset(
        [(str(path), 0)],
        mode="test",
        sampling=ClipSampling(8, 2, 5),
        transform=TransformConfig(test_short=48, test_crop=32, num_crops=1),
    )
    items = [ds[i] for i in range(len(ds))]
    assert all(isinstance(it, dict) for it in items), [getattr(it, "reason", None) for it in items]
    assert ds._infos[0].num_frames == 60
    report = check_dataset([path], progress=False)
    assert report.ok and [n.detail for n in report.corrected] == ["the header says 110 frames, 60 decode"]


@pytest.mark.parametrize(
    "name",
    [
        "libx264-open-gop-mkv-offset",
        "libx265-open-gop-mkv-offset",
        "mpeg4-b-frames-mkv-offset",
        "libx264-b-pyramid-ts-cfr25",
    ],
)
def test_clips_cut_without_reencoding(name, folder, codes):
    """A stream that starts mid-GOP or at an open-GOP keyframe: the decoder drops frames at its
    start; frame 0 is the first frame it outputs, and the count says so."""
    by_id = {c.id: c for c in CASES}
    source = write_case(by_id[name], folder)
    with VideoReader(source) as r:
        second_key = int(r.index().keyframes[1])
    for skip in (3, second_key):
        cut = remux(source, folder / f"cut{skip}-{source.name}", skip=skip)
        sequential = codes(read_all_frames(cut))
        info = probe_video(cut, exact=True)
        assert info.num_frames == len(sequential)
        for idx in ([0], [len(sequential) - 1], [1, 5, 9], list(range(len(sequential)))[::7]):
            assert codes(read_frames(cut, idx, info=info)) == [sequential[i] for i in idx]


def test_a_read_that_contradicts_the_index_falls_back_and_remembers(folder, codes, monkeypatch):
    from video_matrix import Case

    path = write_case(Case("libx264", "mp4", "b-frames", "cfr25"), folder)
    info = probe_video(path, exact=True)
    assert info.index.seekable
    locate = D.FrameIndex.locate

    def lost_after_frame_20(self, pts):
        return None if pts and pts > 20 * 512 else locate(self, pts)

    monkeypatch.setattr(D.FrameIndex, "locate", lost_after_frame_20)
    with VideoReader(path, info=info) as reader:
        assert codes(reader.read([30, 31])) == [30, 31]
        assert not reader.info().index.seekable and "not in the index" in reader.info().slow_reason
        assert reader.info().num_frames == 40


def test_check_data_reports_corrected_and_slow_videos_apart_from_broken(tmp_path, capsys):
    import json

    from coded_video import write_video
    from video_matrix import Case

    from nonlocalnet.cli import main

    write_video(tmp_path / "pause.mkv", 60, pts=PAUSE)
    slow = write_case(Case("libx264", "avi", "b-pyramid", "cfr25"), tmp_path)
    write_video(tmp_path / "fine.mp4", 12)
    (tmp_path / "list.txt").write_text(f"pause.mkv 0\n{slow.name} 1\nfine.mp4 0\nmissing.mp4 1\n")
    code = main(
        [
            "check-data",
            "--list",
            str(tmp_path / "list.txt"),
            "--no-progress",
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1  # one file is missing
    assert f"COUNT {tmp_path / 'pause.mkv'}: the header says 110 frames, 60 decode" in out
    assert f"SLOW {slow}: decoded frames are not in timestamp order" in out
    assert "4 videos" in out and "1 bad, 1 with a corrected frame count, 1 slow to read" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [b["index"] for b in report["bad"]] == [3]
    assert [n["index"] for n in report["corrected"]] == [0] and [n["index"] for n in report["slow"]] == [1]


def test_check_data_refuses_a_negative_worker_count(tmp_path, capsys):
    from coded_video import write_video

    from nonlocalnet.cli import main
    from nonlocalnet.data import check_dataset

    write_video(tmp_path / "fine.mp4", 12)
    (tmp_path / "list.txt").write_text("fine.mp4 0\n")
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        check_dataset([tmp_path / "fine.mp4"], num_workers=-1, progress=False)
    assert main(["check-data", "--list", str(tmp_path / "list.txt"), "--workers", "-1", "--no-progress"]) == 2
    assert "num_workers must be an int >= 0" in capsys.readouterr().err
