"""The clip dataset, its batches, the bad-data log and the frame cache."""

import json
import logging

import pytest
import torch

from nonlocalnet.data import (
    BadDataLog,
    BadSample,
    ClipSampling,
    DataQualityError,
    TransformConfig,
    VideoClipDataset,
    VideoSample,
    collate_clips,
)

SMALL = TransformConfig(min_short=32, max_short=40, crop=32, test_short=32, test_crop=32, num_crops=3)
SAMPLING = ClipSampling(clip_length=4, stride=2, num_clips=3)


# -- the dataset ----------------------------------------------------------------------------------


@pytest.fixture
def videos(make_video, tmp_path):
    good = [make_video(f"v{i}.mp4", n) for i, n in enumerate((40, 6))]  # the second is short: wraps
    whole = good[0].read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 20)
    bad = [tmp_path / "missing.mp4", tmp_path / "empty.mp4", tmp_path / "cut.mp4", tmp_path / "noise.mp4"]
    return [VideoSample(str(p), i) for i, p in enumerate(good + bad)]


def test_train_items_shape_and_determinism(videos):
    ds = VideoClipDataset(videos[:2], mode="train", sampling=SAMPLING, transform=SMALL, seed=7)
    assert len(ds) == 2 and ds.item_shape == (3, 4, 32, 32)
    item = ds[0]
    assert set(item) == {"video", "label", "index", "clip"}
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
    assert (item["label"], item["index"], item["clip"]) == (0, 0, 0)
    again = VideoClipDataset(videos[:2], mode="train", sampling=SAMPLING, transform=SMALL, seed=7)
    assert torch.equal(again[0]["video"], item["video"])  # same (seed, epoch, index)
    assert torch.equal(ds[(0, 0)]["video"], item["video"])
    assert not torch.equal(ds[(0, 1)]["video"], item["video"])  # another epoch
    ds.set_epoch(1)
    assert torch.equal(ds[0]["video"], ds[(0, 1)]["video"])
    other = VideoClipDataset(videos[:2], mode="train", sampling=SAMPLING, transform=SMALL, seed=8)
    assert not torch.equal(other[0]["video"], item["video"])
    assert ds[1]["video"].shape == (3, 4, 32, 32)  # 6 frames < window of 8: wraps around


def test_test_items_are_clips_times_crops(videos):
    ds = VideoClipDataset(videos[:2], mode="test", sampling=SAMPLING, transform=SMALL)
    assert len(ds) == 6 and ds.item_shape == (3, 3, 4, 32, 32)
    items = [ds[i] for i in range(6)]
    assert [(it["index"], it["clip"], it["label"]) for it in items] == [
        (0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 1), (1, 1, 1), (1, 2, 1)
    ]  # fmt: skip
    assert all(it["video"].shape == (3, 3, 4, 32, 32) for it in items)
    assert not torch.equal(items[0]["video"], items[2]["video"])  # other times
    assert torch.equal(items[0]["video"], ds[(0, 5)]["video"])  # no randomness at test time
    with pytest.raises(IndexError):
        ds[6]


def test_bad_videos_become_bad_samples(videos):
    ds = VideoClipDataset(videos, mode="train", sampling=SAMPLING, transform=SMALL)
    bad = [ds[i] for i in range(2, 6)]
    assert all(isinstance(b, BadSample) for b in bad)
    assert [b.index for b in bad] == [2, 3, 4, 5]
    assert [b.path for b in bad] == [videos[i].path for i in range(2, 6)]
    reasons = [b.reason for b in bad]
    assert "file not found" in reasons[0] and "empty file" in reasons[1]
    assert "cannot open" in reasons[2] and "cannot open" in reasons[3]
    assert bad[0].shape == (3, 4, 32, 32)
    test_ds = VideoClipDataset(videos, mode="test", sampling=SAMPLING, transform=SMALL)
    b = test_ds[3 * 3 + 1]
    assert isinstance(b, BadSample) and b.index == 3 and b.shape == (3, 3, 4, 32, 32)


def test_collate_clips(videos):
    ds = VideoClipDataset(videos, mode="train", sampling=SAMPLING, transform=SMALL)
    batch = collate_clips([ds[0], ds[2], ds[1], ds[3]])
    assert batch.video.shape == (2, 3, 4, 32, 32) and len(batch) == 2
    assert batch.label.tolist() == [0, 1] and batch.label.dtype == torch.int64
    assert batch.index.tolist() == [0, 1] and batch.clip.tolist() == [0, 0]
    assert [b.index for b in batch.bad] == [2, 3]
    empty = collate_clips([ds[4], ds[5]])
    assert empty.video.shape == (0, 3, 4, 32, 32) and len(empty) == 0 and len(empty.bad) == 2
    assert collate_clips([BadSample(0, "x", "gone")]).video.numel() == 0
    moved = batch.to("cpu")
    assert torch.equal(moved.video, batch.video) and moved.bad == batch.bad
    with pytest.raises(TypeError, match="BadSample"):
        collate_clips([{"video": 1}])


def test_bad_data_log(caplog):
    log = BadDataLog()
    bad = [BadSample(i, f"/data/v{i}.mp4", f"reason {i}") for i in range(7)]
    with caplog.at_level(logging.WARNING, logger="nonlocalnet.data"):
        assert log.add(bad[:3]) == 3
        assert log.add([bad[0], BadSample(0, "/data/v0.mp4", "reason 0")]) == 0  # deduplicated
    assert log.count == 3 and len(caplog.records) == 3
    assert "/data/v1.mp4" in caplog.records[1].getMessage()
    assert log.fraction(300) == 0.01
    log.check(300)  # exactly at the threshold: fine
    other = BadDataLog()
    other.add(bad[2:7])
    log.merge(json.loads(json.dumps(other.summary()))["bad"])  # e.g. gathered from another rank
    assert log.count == 7
    log.merge(other)
    assert log.count == 7
    with pytest.raises(DataQualityError) as err:
        log.check(100, threshold=0.05)
    msg = str(err.value)
    assert "7 bad videos out of 100" in msg and "7.00%" in msg and "5.00%" in msg
    assert "/data/v0.mp4 (reason 0)" in msg and "and 2 more" in msg
    summary = log.summary()
    assert json.loads(json.dumps(summary)) == summary and summary["count"] == 7
    assert summary["bad"][0] == {"index": 0, "path": "/data/v0.mp4", "reason": "reason 0"}
    assert BadDataLog().fraction(0) == 0.0


def test_clip_batch_pin_memory(monkeypatch):
    batch = collate_clips(
        [{"video": torch.zeros(2), "label": 1, "index": 0, "clip": 0}, BadSample(1, "x", "gone")]
    )
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self) or self.clone())
    copy = batch.pin_memory()  # what DataLoader(pin_memory=True) calls
    assert len(pinned) == 4 and copy is not batch and copy.bad == batch.bad and copy.bad is not batch.bad
    assert torch.equal(copy.video, batch.video) and copy.label.dtype == torch.int64


def test_frame_cache_gives_the_same_clips_and_still_reports_truncated_files(make_video, tmp_path):
    from nonlocalnet.data import ClipSampling, FrameCache, TransformConfig, VideoClipDataset, VideoSample

    good = make_video("good.mp4", 48)
    whole = make_video("fast.mp4", 48, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    samples = [VideoSample(str(good), 0), VideoSample(str(cut), 1)]
    kw = {"mode": "train", "sampling": ClipSampling(clip_length=8, stride=2), "seed": 3}
    kw["transform"] = TransformConfig(min_short=48, max_short=56, crop=40)
    plain = VideoClipDataset(samples, **kw)
    cache = FrameCache()
    cached = VideoClipDataset(samples, frame_cache=cache, **kw)
    for epoch in range(3):
        a, b = plain[(0, epoch)], cached[(0, epoch)]
        assert torch.equal(a["video"], b["video"])
    assert len(cache) == 1 and cache.bytes == 48 * 48 * 64 * 3  # 48 frames of 64 x 48 RGB
    bad = cached[(1, 0)]
    assert bad.path == str(cut) and bad.reason.startswith(("truncated: ", "decoding failed"))
    tiny = VideoClipDataset(samples, frame_cache=FrameCache(max_bytes=1), **kw)
    assert torch.equal(tiny[(0, 1)]["video"], plain[(0, 1)]["video"])  # over budget: read as usual
