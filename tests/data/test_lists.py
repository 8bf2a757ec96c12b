"""List files as users bring them: the official Kinetics CSVs, mmaction2 video / raw-frame /
multi-label lists, CSV headers with other names, a BOM, quoted names, commas in space lists,
and class-per-folder trees with every video extension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from coded_video import frame_code, frame_image, write_video
from PIL import Image

from nonlocalnet.data import (
    BadSample,
    ClipSampling,
    FrameCache,
    MissingVideo,
    TransformConfig,
    VideoClipDataset,
    VideoSample,
    check_dataset,
    read_class_names,
    read_video_list,
    scan_class_folders,
)
from nonlocalnet.data.sampling import window_frames

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split"


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")  # scanning and listing never open them


# -- the official Kinetics CSVs ------------------------------------------------------------------


def test_kinetics_csv_finds_videos_by_the_download_scripts_names(tmp_path):
    root = tmp_path / "k400"
    _touch(
        root,
        "abseiling/aaa_000001_000011.mp4",  # class folder, the label as is
        "air_drumming/bbb_000005_000015.MP4",  # spaces as _, upper-case extension
        "train/ccc.mkv",  # a whole YouTube video under the split's folder
        "eee_000003_000013.webm",  # flat
        "eee_000003_000013.mp4",  # two extensions: .mp4 wins
    )
    csv = tmp_path / "kinetics-700_train.csv"
    csv.write_text(
        f"{KINETICS_HEADER},is_cc\n"
        "zumba,ccc,2,12,train,1\n"
        'abseiling,aaa,1,11,train,0\n"air drumming",bbb,5,15,train,0\n'
        "abseiling,ddd,0,10,train,0\n"
        '"passing American football (in game)",eee,3,13,train,0\n'
    )
    read = read_video_list(csv, root=root)
    # sorted, as the authors' classids.json numbers the Kinetics classes
    assert read.class_names == ["abseiling", "air drumming", "passing American football (in game)", "zumba"]
    assert read.format == "Kinetics CSV"
    assert read.samples == [
        VideoSample(str(root / "train/ccc.mkv"), 3, start=2.0, end=12.0),
        VideoSample(str(root / "abseiling/aaa_000001_000011.mp4"), 0),
        VideoSample(str(root / "air_drumming/bbb_000005_000015.MP4"), 1),
        VideoSample(str(root / "ddd_000000_000010.mp4"), 0),  # not there: read as a missing file
        VideoSample(str(root / "eee_000003_000013.mp4"), 2),
    ]
    assert read.missing == [MissingVideo(3, f"{csv}:5", "ddd_000000_000010.<ext> or ddd.<ext>")]
    given = ["zumba", "abseiling", "air drumming", "passing American football (in game)"]
    assert [s.label for s in read_video_list(csv, root=root, class_names=given).samples] == [0, 1, 2, 1, 3]


def test_the_kinetics_test_split_without_labels_is_a_clear_error(tmp_path):
    csv = tmp_path / "kinetics-400_test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\naaa,1,11,test\n")
    with pytest.raises(ValueError, match=r"test.csv:1: no 'label' column.*test split.*validation CSV"):
        read_video_list(csv)


def test_kinetics_rows_with_bad_times_name_the_line(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text(f"{KINETICS_HEADER}\nabseiling,aaa,1,11,val\nabseiling,bbb,ten,20,val\n")
    with pytest.raises(ValueError, match=r"val.csv:3: time_start 'ten' is not a number"):
        read_video_list(csv)


def _square_video(path: Path, frames: int = 48) -> Path:
    return write_video(path, frames, width=64, height=64, fps=25)


SEE_ALL = TransformConfig(test_short=64, test_crop=64, num_crops=1, mean=(0.0,) * 3, std=(1.0,) * 3)


def _codes(item: dict) -> list[int]:
    video = item["video"] if item["video"].dim() == 4 else item["video"][0]  # (3, T, H, W): one crop
    return [frame_code(f) for f in video.permute(1, 2, 3, 0)]


@pytest.mark.parametrize("cache", [False, True], ids=["read", "frame-cache"])
def test_a_whole_youtube_video_is_read_only_within_the_clip_window(tmp_path, cache):
    _square_video(tmp_path / "ccc.mp4")  # 48 frames at 25 fps: frame i shown at i / 25 s
    csv = tmp_path / "val.csv"
    csv.write_text(f"{KINETICS_HEADER}\nzumba,ccc,1,1.5,val\n")
    samples = read_video_list(csv).samples
    assert samples == [VideoSample(str(tmp_path / "ccc.mp4"), 0, start=1.0, end=1.5)]
    frame_cache = FrameCache() if cache else None
    window = list(range(25, 38))  # shown in [1.0, 1.5) s
    test = VideoClipDataset(
        samples,
        mode="test",
        sampling=ClipSampling(clip_length=13, stride=1, num_clips=1),
        transform=SEE_ALL,
        frame_cache=frame_cache,
    )
    assert _codes(test[0]) == window
    train = VideoClipDataset(
        samples,
        mode="train",
        sampling=ClipSampling(clip_length=8, stride=2, num_clips=1),  # longer than the window: loops in it
        transform=TransformConfig(
            min_short=64, max_short=64, crop=64, flip=False, mean=(0.0,) * 3, std=(1.0,) * 3
        ),
        frame_cache=frame_cache,
    )
    for epoch in range(3):
        assert set(_codes(train[(0, epoch)])) <= set(window)


def test_a_window_past_the_end_of_the_video_is_a_bad_sample(tmp_path, make_video):
    path = make_video("v.mp4", 10)
    data = VideoClipDataset(
        [VideoSample(str(path), 0, start=5.0, end=15.0)],
        mode="test",
        sampling=ClipSampling(clip_length=2, stride=1, num_clips=1),
        transform=SEE_ALL,
    )
    bad = data[0]
    assert (
        isinstance(bad, BadSample) and "no frame in the window [5.0, 15.0) s of its 10 frames" in bad.reason
    )
    report = check_dataset([VideoSample(str(path), 0, start=5.0, end=15.0)], progress=False)
    assert [b.reason for b in report.bad] == [bad.reason]


def test_window_frames_by_timestamps_or_frame_rate():
    pts = np.array([100, 140, 180, 220, 260])  # 25 fps in 1/1000 s, starting at 0.1 s
    assert window_frames(0.04, 0.12, num_frames=5, pts=pts, time_base=0.001) == range(1, 3)
    assert window_frames(0.04, 0.12, num_frames=5, fps=25.0) == range(1, 3)
    assert window_frames(0.0, 10.0, num_frames=5, fps=25.0) == range(0, 5)


# -- mmaction2 lists ------------------------------------------------------------------------------


def test_raw_frame_lists_read_folders_of_frames(tmp_path):
    for i in range(6):  # mmaction2's names, with flow images beside the RGB ones
        (tmp_path / "frames/v1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame_image(i + 10, 64, 64)).save(tmp_path / f"frames/v1/img_{i + 1:05d}.png")
        Image.fromarray(frame_image(0, 64, 64)).save(tmp_path / f"frames/v1/flow_x_{i + 1:05d}.png")
    listed = tmp_path / "rawframes_train.txt"
    listed.write_text("frames/v1 6 1\nframes/v2 300 0\n")
    read = read_video_list(listed)
    assert read.format == "raw frames 'dir n_frames label'"
    assert read.samples == [
        VideoSample(str(tmp_path / "frames/v1"), 1, num_frames=6),
        VideoSample(str(tmp_path / "frames/v2"), 0, num_frames=300),
    ]
    data = VideoClipDataset(
        read.samples,
        mode="test",
        sampling=ClipSampling(clip_length=3, stride=2, num_clips=1),
        transform=SEE_ALL,
    )
    assert _codes(data[0]) == [10, 12, 14]
    assert isinstance(data[1], BadSample) and data[1].reason == "frame folder not found"
    (tmp_path / "frames/v2").mkdir()
    Image.fromarray(frame_image(0, 64, 64)).save(tmp_path / "frames/v2/img_00001.jpg")
    report = check_dataset(read.samples, decode=True, progress=False)
    assert report.ok
    assert [n.detail for n in report.corrected] == ["the list says 300 frames, the folder has 1"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("a.mp4 0 1\nb.mp4 2\n", r"list.txt:1: 2 labels \(0 1\) after 'a.mp4': multi-label"),
        ("a 10 0\nb 12 1 2\n", r"list.txt:2: 2 labels \(1 2\) after 'b': multi-label"),
        ("a.mp4 0\nframes/b 12 1\n", r"list.txt:2: 2 numbers \(12 1\) after 'frames/b' in a list of videos"),
        ("a.mp4 air drumming\n", r"list.txt:1: the path seems to end at 'a.mp4'.*\(a.mp4 \"air drumming\"\)"),
        ("a.mp4 0\nb.mp4 zero\n", r"list.txt:2: label 'zero' is not an integer.*data.class_names=FILE"),
        ("x,1.mp4 a\ny.mp4,b c\n", r"both 'path,label' \(CSV\) and 'path label' read it alike"),
    ],
    ids=[
        "multi-label",
        "raw-frame-multi-label",
        "raw-frame-among-videos",
        "unquoted-name",
        "mixed",
        "ambiguous",
    ],
)
def test_list_lines_that_cannot_be_read_name_the_line_and_the_fix(tmp_path, text, match):
    f = tmp_path / "list.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_video_list(f)


def test_a_list_of_class_names_is_numbered_in_sorted_order(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text('b.mp4 zumba\na.mp4 "air drumming"\nc d.mp4 abseiling\n')
    read = read_video_list(f)
    assert read.class_names == ["abseiling", "air drumming", "zumba"]
    assert [(Path(s.path).name, s.label) for s in read.samples] == [
        ("b.mp4", 2),
        ("a.mp4", 1),
        ("c d.mp4", 0),
    ]


# -- CSV headers, BOM, quoting, commas ------------------------------------------------------------


@pytest.mark.parametrize("header", ["video,label", "filename,label", "path,class", "Video_Path,Label,extra"])
def test_csv_headers_with_other_column_names(tmp_path, header):
    f = tmp_path / "train.csv"
    f.write_text(f"{header}\nx.mp4,1\ny.mp4,0\n".replace("1\n", "1,e\n" if "extra" in header else "1\n"))
    read = read_video_list(f)
    assert [(Path(s.path).name, s.label) for s in read.samples] == [("x.mp4", 1), ("y.mp4", 0)]


def test_a_space_separated_header_line_is_not_a_video(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("Video Label\nx.mp4 1\n")
    assert read_video_list(f).samples == [VideoSample(str(tmp_path / "x.mp4"), 1)]


def test_a_utf8_bom_is_not_part_of_the_first_path_or_header(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes("path,label\nx.mp4,1\n".encode("utf-8-sig"))
    assert read_video_list(f).samples == [VideoSample(str(tmp_path / "x.mp4"), 1)]
    f.write_bytes("x.mp4 1\n".encode("utf-8-sig"))
    assert read_video_list(f).samples == [VideoSample(str(tmp_path / "x.mp4"), 1)]
    names = tmp_path / "classes.txt"
    names.write_bytes("abseiling\narchery\n".encode("utf-8-sig"))
    assert read_class_names(names) == ["abseiling", "archery"]


def test_commas_in_paths_of_a_space_separated_list_do_not_make_it_csv(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("clips/a,b.mp4 0\nclips/c.mp4 1\n")
    assert [Path(s.path).name for s in read_video_list(f).samples] == ["a,b.mp4", "c.mp4"]
    f.write_text("clips/a,b.mp4 0\nclips/c,d.mp4 1\n")  # a comma on every line
    assert [Path(s.path).name for s in read_video_list(f).samples] == ["a,b.mp4", "c,d.mp4"]
    f.write_text('"my clips/a.mp4",abseiling\nb.mp4,"air drumming"\n')  # quoted CSV
    read = read_video_list(f, class_names=["abseiling", "air drumming"])
    assert [(Path(s.path).name, s.label) for s in read.samples] == [("a.mp4", 0), ("b.mp4", 1)]


def test_class_names_with_spaces_in_a_space_list_are_quoted(tmp_path):
    f = tmp_path / "val.txt"
    f.write_text('my clips/a.mp4 "air drumming"\n"b 2.mp4" abseiling\n')
    read = read_video_list(f, class_names=["abseiling", "air drumming"])
    assert read.samples == [
        VideoSample(str(tmp_path / "my clips/a.mp4"), 1),
        VideoSample(str(tmp_path / "b 2.mp4"), 0),
    ]


# -- folder trees ---------------------------------------------------------------------------------


def test_folder_trees_take_every_video_extension_and_list_what_they_skip(tmp_path):
    videos = [
        "a/1.MP4",
        "a/2.m4v",
        "a/3.mpg",
        "a/x/4.MPEG",
        "b/5.flv",
        "b/6.3gp",
        "b/7.ts",
        "b/8.WMV",
        "b/9.ogv",
    ]
    _touch(tmp_path, *videos, "a/notes.txt", "a/.DS_Store", "a/.cache/0.mp4", "README", ".git/config")
    scan = scan_class_folders(tmp_path)
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in scan.samples] == videos
    assert [(Path(f.path).relative_to(tmp_path).as_posix(), f.reason) for f in scan.skipped] == [
        (".git", "hidden folder"),
        ("README", "file outside the class folders"),
        ("a/.DS_Store", "hidden file"),
        ("a/.cache", "hidden folder"),
        ("a/notes.txt", "not a video extension (.txt)"),
    ]


@pytest.mark.parametrize(
    "name,fmt,codec",
    [
        ("v.m4v", "mp4", "libx264"),
        ("v.MPG", "mpeg", "mpeg1video"),
        ("v.flv", "flv", "flv"),
        ("v.3gp", "3gp", "libx264"),
        ("v.ts", "mpegts", "libx264"),
        ("v.wmv", "asf", "wmv2"),
    ],
)
def test_pyav_reads_the_extensions_a_folder_tree_takes(tmp_path, name, fmt, codec):
    (tmp_path / "c").mkdir()
    write_video(tmp_path / "c" / name, 4, fmt=fmt, codec=codec, gop=2)
    scan = scan_class_folders(tmp_path)
    assert [Path(s.path).name for s in scan.samples] == [name]
    assert check_dataset(scan.samples, decode=True, progress=False).ok


def test_check_data_lists_skipped_files_and_missing_videos(tmp_path, capsys):
    from nonlocalnet.cli import main

    _touch(tmp_path / "tree", "zumba/notes.txt")
    write_video(tmp_path / "tree/zumba/v.MP4", 4)
    assert main(["check-data", "--folder", str(tmp_path / "tree"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"SKIPPED {tmp_path / 'tree/zumba/notes.txt'}: not a video extension (.txt)" in out
    assert "checked 1 videos" in out and "1 files skipped" in out
    csv = tmp_path / "val.csv"
    csv.write_text(f"{KINETICS_HEADER}\nzumba,v,0,10,val\nzumba,w,0,10,val\n")
    report = tmp_path / "report.json"
    args = [
        "check-data",
        "--list",
        str(csv),
        "--root",
        str(tmp_path / "tree"),
        "--no-progress",
        "--json",
        str(report),
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"MISSING {csv}:3: no w_000000_000010.<ext> or w.<ext>" in out
    assert "checked 1 videos" in out and "1 listed videos not found" in out
    assert json.loads(report.read_text())["missing"] == [
        {"where": f"{csv}:3", "looked_for": "w_000000_000010.<ext> or w.<ext>"}
    ]


# -- the basic list formats ------------------------------------------------------------------------


def test_read_class_names(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("abseiling\n\n  air drumming \narchery\n")
    assert read_class_names(f) == ["abseiling", "air drumming", "archery"]
    f.write_text("a\nb\n\na\n")
    with pytest.raises(ValueError, match=r"classes.txt:4: duplicate class name 'a' \(first on line 1\)"):
        read_class_names(f)


def test_read_video_list_space_separated(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("a/x.mp4 0\n\nb/my video.mp4 3\n/abs/z.avi 1\n")
    samples = read_video_list(f).samples
    assert samples == [
        VideoSample(str(tmp_path / "a/x.mp4"), 0),
        VideoSample(str(tmp_path / "b/my video.mp4"), 3),
        VideoSample("/abs/z.avi", 1),
    ]
    assert read_video_list(f, root="/data").samples[0].path == "/data/a/x.mp4"


def test_read_video_list_csv_with_header_and_class_names(tmp_path):
    f = tmp_path / "val.csv"
    f.write_text('path,label\nx.mp4,archery\n"y,1.mp4",0\n')
    samples = read_video_list(f, class_names=["abseiling", "archery"]).samples
    assert samples == [VideoSample(str(tmp_path / "x.mp4"), 1), VideoSample(str(tmp_path / "y,1.mp4"), 0)]
    f.write_text("x.mp4,1\ny.mp4,0\n")  # no header
    assert [s.label for s in read_video_list(f).samples] == [1, 0]
    f.write_text("label,id,path\n2,a,x.mp4\n")  # more columns, picked by name
    assert read_video_list(f).samples == [VideoSample(str(tmp_path / "x.mp4"), 2)]


@pytest.mark.parametrize(
    "text,names,match",
    [
        ("a.mp4 0\nb.mp4 zero\n", None, r"list.txt:2: label 'zero' is not an integer"),
        ("a.mp4 0\n\nb.mp4 5\n", ["x", "y"], r"list.txt:3: label 5 out of range \(expected \[0, 1\]\)"),
        ("a.mp4 -1\n", None, r"list.txt:1: label -1 out of range"),
        ("a.mp4 0\nb.mp4\n", None, r"list.txt:2: missing column"),
        ("a.mp4,0\nb.mp4,\n", None, r"list.txt:2: missing column"),
        ("a.mp4,0,7\n", None, r"list.txt:1: 3 columns"),
        ("a.mp4 dog\n", ["cat"], r"list.txt:1: unknown class name 'dog'"),
    ],
    ids=["not-int", "out-of-range", "negative", "missing", "missing-csv", "extra-csv", "unknown-name"],
)
def test_read_video_list_errors_name_file_and_line(tmp_path, text, names, match):
    f = tmp_path / "list.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_video_list(f, class_names=names)


def test_scan_class_folders(tmp_path):
    for rel in ["b/1.mp4", "a/2.MKV", "a/sub/1.avi", "a/notes.txt", "c/.hidden.mp4", ".git/x.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    scan = scan_class_folders(tmp_path)
    assert scan.class_names == ["a", "b", "c"]
    assert scan.samples == [
        VideoSample(str(tmp_path / "a/2.MKV"), 0),
        VideoSample(str(tmp_path / "a/sub/1.avi"), 0),
        VideoSample(str(tmp_path / "b/1.mp4"), 1),
    ]
    with pytest.raises(FileNotFoundError):
        scan_class_folders(tmp_path / "nope")
