"""Frame exactness of seeking reads (``nonlocalnet.data.decode``) on hard inputs: containers that
seek by byte position (MPEG-PS, MPEG-TS) and land off the keyframe or give the next frames the wrong
timestamps, damaged frames whose concealment depends on where decoding started, and decoder errors
that must name the frame. Every read is compared with the sequential decode by the code drawn in
each frame."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
import torch
from coded_video import frame_code, frame_image

from nonlocalnet.data import VideoDecodeError, VideoReader, probe_video, read_all_frames, read_frames


def _encode(path, n, codec, *, fmt=None, options=None, gop=None, bf=None, muxer_options=None):
    with av.open(str(path), "w", format=fmt, options=muxer_options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if gop:
            s.gop_size = gop
        if bf is not None:
            s.codec_context.max_b_frames = bf
        s.codec_context.time_base = Fraction(1, 25)
        s.options = dict(options or {})
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _assert_exact_or_error(path, reads, *, reference=None, info=None):
    """Each read equals the sequential decode (or ``reference`` codes), or raises naming a frame."""
    sequential = read_all_frames(path) if reference is None else None
    codes = [frame_code(f) for f in sequential] if reference is None else reference
    info = info or probe_video(path, exact=True)
    errors = []
    for idx in reads:
        try:
            with VideoReader(path, info=info) as reader:
                got = reader.read(idx)
        except VideoDecodeError as e:
            assert path.name in str(e) and "frame " in e.reason, e
            errors.append(idx)
            continue
        assert [frame_code(f) for f in got] == [codes[i] for i in idx], idx
        if sequential is not None:
            assert torch.equal(got, sequential[idx]), idx
    return errors


def test_mpeg_program_stream_seeks_never_return_a_neighbouring_frame(tmp_path):
    """MPEG-1 in MPEG-PS (VCD-style .mpg) with B-frames: after a seek the demuxer resumes inside a
    PES packet and stamps the next frames with a neighbour's pts; frame 46 was read as frame 48."""
    path = _encode(tmp_path / "v.mpg", 80, "mpeg1video", fmt="mpeg", gop=12, bf=2, options={"qscale": "2"})
    info = probe_video(path, exact=True)
    assert info.num_frames == 80 and info.index.seekable
    reads = [[i] for i in range(30, 80)] + [[46, 47, 48], [79, 5, 60]]
    assert _assert_exact_or_error(path, reads, info=info) == []


def test_a_transport_stream_seek_that_lands_past_the_keyframe_is_retried(tmp_path):
    """H.264 with 16 B-frames in MPEG-TS: seeking to a keyframe's pts lands on a later I-frame and
    the frames referring back are dropped. That is a bad landing (try the keyframe's dts), not a
    reason to give up seeking for the whole video."""
    params = "bframes=16:b-pyramid=strict:b-adapt=0:keyint=50:min-keyint=50"
    options = {"crf": "16", "scenecut": "0", "preset": "veryfast", "x264-params": params}
    path = _encode(tmp_path / "v.ts", 100, "libx264", fmt="mpegts", options=options)
    info = probe_video(path, exact=True)
    with VideoReader(path, info=info) as reader:
        for i in (33, 34, 35, 40, 60):
            assert frame_code(reader.read([i])[0]) == i
        assert reader.info().index.seekable and reader.info().slow_reason is None


def _damage(path, out, frame_packet: int):
    """Copy ``path`` with 24 bytes flipped inside the packet of decode-order packet ``frame_packet``."""
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    pos, size = packets[frame_packet]
    data = bytearray(path.read_bytes())
    for k in range(pos + size // 2, pos + size // 2 + 24):
        data[k] ^= 0x5A
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("name", ["v.mkv", "v.avi"])  # seeking; and read from the start (AVI)
def test_a_damaged_keyframe_is_an_error_not_concealed_differently(tmp_path, name):
    """What the decoder conceals in a damaged frame depends on the frames decoded before it: a
    seeking read and the sequential decode returned different pictures for the same frame. Frames
    decoded from damage are errors naming it; every other read stays exact, those after the next
    keyframe too."""
    source = _encode(tmp_path / name, 40, "libx264", options={"x264-params": "keyint=10:scenecut=0"})
    with av.open(str(source)) as c:
        key_packets = [k for k, p in enumerate(q for q in c.demux(video=0) if q.size) if p.is_keyframe]
    path = _damage(source, tmp_path / f"damaged-{name}", key_packets[2])
    info = probe_video(path, exact=True)
    assert info.index.seekable == (name == "v.mkv")
    errors = _assert_exact_or_error(path, [[i] for i in range(40)] + [[0, 39], [21, 5]], info=info)
    assert [20] in errors and [21, 5] in errors
    assert [0] not in errors and [19] not in errors and [30] not in errors and [39] not in errors
    with pytest.raises(VideoDecodeError, match=r"frame 20 is damaged"):
        read_frames(path, [20])
    with pytest.raises(VideoDecodeError, match=r"frame 21 is decoded from damaged frame 20"):
        read_frames(path, [21])


def test_decoder_errors_name_the_frame(tmp_path):
    """An MP4 whose index comes first (faststart) cut short: the last packets are incomplete, the
    decoder rejects them; the error names the frame that could not be read."""
    source = _encode(
        tmp_path / "v.mp4",
        60,
        "libx264",
        options={"x264-params": "keyint=10:scenecut=0"},
        muxer_options={"movflags": "faststart"},
    )
    data = source.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.99)])
    info = probe_video(path, exact=True)
    errors = _assert_exact_or_error(
        path, [[i] for i in range(info.num_frames)], reference=list(range(60)), info=info
    )
    assert errors and [0] not in errors  # the source is clean: only the end fails, with a frame named


def test_a_vp9_clip_cut_before_a_keyframe_is_not_broken(tmp_path):
    """A WebM cut without re-encoding, starting on inter frames: the VP9 decoder rejects those
    packets. The frames from the first keyframe on are the video; it was reported unreadable."""
    from video_matrix import remux

    source = _encode(
        tmp_path / "v.webm", 36, "libvpx-vp9", gop=12, options={"crf": "10", "b:v": "0", "cpu-used": "8"}
    )
    cut = remux(source, tmp_path / "cut.webm", skip=5)
    sequential = read_all_frames(cut)
    assert [frame_code(f) for f in sequential] == list(range(12, 36))
    info = probe_video(cut, exact=True)
    assert info.num_frames == 24 and info.index.seekable
    assert _assert_exact_or_error(cut, [[i] for i in range(24)] + [[23, 0, 12]], info=info) == []


def test_transport_streams_joined_end_to_end_are_not_read_by_timestamp_rank(tmp_path):
    """Two recordings joined byte for byte (HLS segments, a broadcast capture whose clock
    restarted): the second part's timestamps fall between the first part's frames 30 to 59, far
    past the frames checked when indexing. Frame 34 was read as frame 32."""

    def part(name, codes, pts):
        with av.open(str(tmp_path / name), "w", format="mpegts", options=ts_options) as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            s.codec_context.time_base = Fraction(1, 1000)
            s.options = {"crf": "16", "scenecut": "0", "x264-params": "keyint=10:bframes=2"}
            for code, t in zip(codes, pts, strict=True):
                frame = av.VideoFrame.from_ndarray(frame_image(code), format="rgb24")
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                for p in s.encode(frame):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        return (tmp_path / name).read_bytes()

    ts_options = {"mpegts_copyts": "1", "avoid_negative_ts": "disabled"}
    first = part("a.ts", range(60), [2000 + 40 * i for i in range(60)])
    second = part("b.ts", range(60, 90), [3213 + 40 * j for j in range(30)])
    path = tmp_path / "joined.ts"
    path.write_bytes(first + second)
    assert [frame_code(f) for f in read_all_frames(path)] == list(range(90))
    info = probe_video(path, exact=True)
    assert _assert_exact_or_error(path, [[i] for i in range(28, 40)] + [[34], [89, 61]], info=info) == []
    assert info.num_frames == 90 and "timestamp reset" in (info.slow_reason or "")
