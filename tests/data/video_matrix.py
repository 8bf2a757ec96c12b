"""Test videos in the encodings real data sets use: codec x container x GOP structure x timing.

Every frame carries its source index as a block code (``conftest.frame_image``), so a decoded
frame says which source frame it is whatever the compression did to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from coded_video import frame_image

# GOP structures per codec: the encoder options that produce them.
_X264 = {"crf": "16", "scenecut": "0", "preset": "veryfast"}
_X265_LOG = "log-level=error:scenecut=0"
GOPS: dict[str, dict[str, dict]] = {
    "libx264": {
        "b-frames": {"options": {**_X264, "keyint": "10", "bframes": "2", "b-pyramid": "none"}},
        "b-pyramid": {"options": {**_X264, "keyint": "12", "bframes": "3", "b-pyramid": "normal"}},
        "open-gop": {"options": {**_X264, "keyint": "10", "bframes": "3", "open-gop": "1"}},
        "long-gop": {"options": {**_X264, "keyint": "1000", "min-keyint": "1000", "bframes": "2"}},
        "all-intra": {"options": {**_X264, "keyint": "1"}},
    },
    "libx265": {
        "b-pyramid": {
            "options": {"crf": "16", "x265-params": f"{_X265_LOG}:keyint=12:bframes=4:b-pyramid=1:open-gop=0"}
        },
        "open-gop": {"options": {"crf": "16", "x265-params": f"{_X265_LOG}:keyint=10:bframes=3:open-gop=1"}},
        "all-intra": {"options": {"crf": "16", "x265-params": f"{_X265_LOG}:keyint=1"}},
    },
    "mpeg4": {
        "b-frames": {"gop": 10, "bf": 2, "options": {"qscale": "2"}},
        "long-gop": {"gop": 1000, "bf": 0, "options": {"qscale": "2"}},
        "all-intra": {"gop": 1, "bf": 0, "options": {"qscale": "2"}},
    },
    "libvpx-vp9": {  # altref (hidden) frames by default: one packet can hold two frames
        "altref": {"gop": 12, "options": {"crf": "10", "b:v": "0", "cpu-used": "8", "lag-in-frames": "16"}},
        "long-gop": {"gop": 1000, "options": {"crf": "10", "b:v": "0", "cpu-used": "8"}},
    },
    "mjpeg": {"all-intra": {"pix_fmt": "yuvj420p", "options": {"q:v": "2"}}},
    "libsvtav1": {  # random access with hidden frames
        "random-access": {"gop": 12, "options": {"crf": "20", "preset": "12"}},
    },
}
CONTAINERS: dict[str, tuple[str, ...]] = {
    "libx264": ("mp4", "mkv", "avi", "mov", "ts"),
    "libx265": ("mp4", "mkv", "mov", "ts"),
    "mpeg4": ("avi", "mp4", "mkv", "mov", "ts"),
    "libvpx-vp9": ("webm", "mkv", "mp4"),
    "mjpeg": ("avi", "mkv", "mov"),
    "libsvtav1": ("webm", "mkv", "mp4"),
}
HARDEST = {
    "libx264": "b-pyramid",
    "libx265": "open-gop",
    "mpeg4": "b-frames",
    "libvpx-vp9": "altref",
    "mjpeg": "all-intra",
    "libsvtav1": "random-access",
}
TIMINGS = ("cfr25", "ntsc", "film", "vfr", "offset")
FORMATS = {"mkv": "matroska", "ts": "mpegts"}


@dataclass(frozen=True)
class Case:
    codec: str
    container: str
    gop: str
    timing: str
    frames: int = 40

    @property
    def id(self) -> str:
        return f"{self.codec}-{self.gop}-{self.container}-{self.timing}"


def cases() -> list[Case]:
    """A covering design: every codec in every container it goes in (hardest GOP, two timings),
    every GOP structure of every codec, every timing for the codecs of public data sets."""
    out: dict[str, Case] = {}

    def add(case: Case) -> None:
        out.setdefault(case.id, case)

    for codec, containers in CONTAINERS.items():
        for container in containers:
            for timing in ("cfr25", "vfr"):
                add(Case(codec, container, HARDEST[codec], timing))
        for gop in GOPS[codec]:
            add(Case(codec, containers[0], gop, "ntsc"))
            add(Case(codec, "mkv", gop, "offset"))
    for codec in ("libx264", "mpeg4", "libvpx-vp9"):
        for container in CONTAINERS[codec]:
            for timing in TIMINGS:
                add(Case(codec, container, HARDEST[codec], timing))
    add(Case("libx265", "mp4", "open-gop", "film"))
    return sorted(out.values(), key=lambda c: c.id)


def timestamps(timing: str, n: int) -> tuple[Fraction, Fraction, list[int] | None]:
    """``(rate, time_base, pts or None)`` for a timing."""
    if timing == "cfr25":
        return Fraction(25), Fraction(1, 25), None
    if timing == "ntsc":
        return Fraction(30000, 1001), Fraction(1001, 30000), None
    if timing == "film":
        return Fraction(24000, 1001), Fraction(1001, 24000), None
    if timing == "vfr":  # a phone recording: irregular gaps, mean 40 ms
        steps = [33, 40, 67, 20, 41, 39]
        pts = [0]
        for i in range(n - 1):
            pts.append(pts[-1] + steps[i % len(steps)])
        return Fraction(25), Fraction(1, 1000), pts
    if timing == "offset":  # the first frame 1.5 s after the start of the file
        return Fraction(25), Fraction(1, 1000), [1500 + 40 * i for i in range(n)]
    raise ValueError(timing)


def write_case(case: Case, folder: Path) -> Path:
    import av

    path = folder / f"{case.id}.{case.container}"
    spec = GOPS[case.codec][case.gop]
    rate, time_base, pts = timestamps(case.timing, case.frames)
    with av.open(str(path), "w", format=FORMATS.get(case.container)) as c:
        s = c.add_stream(case.codec, rate=rate)
        s.width, s.height, s.pix_fmt = 64, 48, spec.get("pix_fmt", "yuv420p")
        if "gop" in spec:
            s.gop_size = spec["gop"]
        if "bf" in spec:
            s.codec_context.max_b_frames = spec["bf"]
        s.codec_context.time_base = time_base
        s.options = dict(spec["options"])
        for i in range(case.frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.time_base = time_base
            frame.pts = pts[i] if pts is not None else i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def remux(source: Path, dest: Path, *, skip: int) -> Path:
    """Copy ``source``'s video packets without decoding, leaving out the first ``skip`` (a clip cut
    from a longer recording without re-encoding)."""
    import av

    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        s_in = src.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for k, p in enumerate(q for q in src.demux(s_in) if q.size):
            if k < skip:
                continue
            p.stream = s_out
            out.mux(p)
    return dest
