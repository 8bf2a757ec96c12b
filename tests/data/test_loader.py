import json

import pytest
import torch
from torch.utils.data import Dataset

from nonlocalnet.data import (
    BadSample,
    ClipSampling,
    EpochSampler,
    TransformConfig,
    VideoClipDataset,
    VideoSample,
    build_loader,
    check_dataset,
)


class Items(Dataset):
    """Item ``i`` is a clip whose video holds ``(i, epoch)``; every 7th item is bad."""

    epoch_keys = True

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if i % 7 == 6:
            return BadSample(i, f"v{i}", "broken", (2,))
        return {"video": torch.tensor([i, epoch]), "label": i % 3, "index": i, "clip": 0}


def ids(batch):
    return batch.index.tolist() + [b.index for b in batch.bad]


def batches(loader):
    return [sorted(ids(b)) for b in loader]


@pytest.mark.parametrize("n,drop_last", [(40, True), (37, True), (37, False)])
def test_rank_batches_union_to_single_process_batches(n, drop_last):
    ds = Items(n)
    kw = dict(shuffle=True, seed=3, num_workers=0, drop_last=drop_last, pin_memory=False)
    single = build_loader(ds, batch_size=8, **kw)
    ranks = [build_loader(ds, batch_size=4, distributed=(r, 2), **kw) for r in range(2)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.sampler.set_epoch(epoch)
        one = batches(single)
        two = [batches(r) for r in ranks]
        assert len(two[0]) == len(two[1])  # every rank runs as many steps
        for k, expected in enumerate(one):
            union = sorted(two[0][k] + two[1][k])
            if drop_last or k < len(one) - 1:
                assert union == expected
            else:  # the last partial batch is padded with the epoch's first item
                assert union == sorted([*expected, single.sampler.indices()[0]])
        if epoch == 0:
            first = one
    assert first != one  # a new permutation each epoch
    seen = sorted(i for b in first for i in b)
    if drop_last:
        assert len(set(seen)) == len(seen) == n - n % 8
    else:
        assert seen == list(range(n))


def test_padding_and_num_padded():
    samplers = [EpochSampler(5, shuffle=False, rank=r, world=2) for r in range(2)]
    assert [list(s) for s in samplers] == [[0, 2, 4], [1, 3, 0]]
    assert samplers[0].num_padded == 1
    cut = [list(EpochSampler(5, shuffle=False, rank=r, world=2, drop_last=True)) for r in range(2)]
    assert cut == [[0, 2], [1, 3]]
    assert list(EpochSampler(2, shuffle=False, rank=3, world=4)) == [1]  # padded beyond n
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(5, shuffle=False, rank=2, world=2)


def test_start_batch_skips_the_first_batches_of_the_resumed_epoch_only():
    ds = Items(30)
    kw = dict(batch_size=4, shuffle=True, seed=1, num_workers=0, drop_last=False, pin_memory=False)
    full = batches(build_loader(ds, **kw, epoch=2))
    resumed = build_loader(ds, **kw, epoch=2, start_batch=3)
    assert len(resumed) == len(full) - 3
    assert batches(resumed) == full[3:]
    assert batches(resumed) == full[3:]  # iterating has no side effect
    resumed.sampler.set_epoch(3)
    assert batches(resumed) == batches(build_loader(ds, **kw, epoch=3))  # other epochs: whole
    ranks = [build_loader(ds, **kw, distributed=(r, 2), start_batch=1) for r in range(2)]
    single = batches(build_loader(ds, **{**kw, "batch_size": 8}))
    assert sorted(batches(ranks[0])[0] + batches(ranks[1])[0]) == single[1]


@pytest.mark.parametrize("workers", [2, 4])
def test_a_resumed_loader_with_workers_yields_the_rest_of_the_pass(workers):
    ds = Items(30)
    kw = dict(batch_size=4, shuffle=True, seed=1, drop_last=True, pin_memory=False)

    def seen(start: int, num_workers: int) -> list[list[list[int]]]:
        loader = build_loader(ds, **kw, num_workers=num_workers, epoch=2, start_batch=start)
        out = []
        for epoch in (2, 3):
            loader.sampler.set_epoch(epoch)
            out.append(batches(loader))
        return out

    full = seen(0, 0)
    assert seen(3, workers) == [full[0][3:], full[1]]


def test_items_get_the_epoch_and_bad_samples_pass_through():
    loader = build_loader(Items(14), batch_size=7, shuffle=False, seed=0, num_workers=0, drop_last=False)
    loader.sampler.set_epoch(5)
    batch = next(iter(loader))
    assert batch.video[:, 1].tolist() == [5] * 6 and [b.index for b in batch.bad] == [6]


def test_persistent_workers_see_each_epoch():
    loader = build_loader(Items(6), batch_size=3, shuffle=True, seed=0, num_workers=1, drop_last=True)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        videos = torch.cat([b.video for b in loader])
        assert videos[:, 1].tolist() == [epoch] * len(videos)


def test_video_loader_end_to_end(make_video, tmp_path):
    samples = [VideoSample(str(make_video(f"v{i}.mp4", 20)), i) for i in range(3)]
    samples.append(VideoSample(str(tmp_path / "missing.mp4"), 3))
    cfg = TransformConfig(min_short=32, max_short=36, crop=32, test_short=32, test_crop=32, num_crops=1)
    ds = VideoClipDataset(samples, mode="train", sampling=ClipSampling(4, 2, 2), transform=cfg)
    batch = next(iter(build_loader(ds, batch_size=4, shuffle=False, seed=0, num_workers=0, drop_last=True)))
    assert batch.video.shape == (3, 3, 4, 32, 32) and batch.label.tolist() == [0, 1, 2]
    assert [(b.index, b.reason) for b in batch.bad] == [(3, "file not found")]


def test_check_dataset(make_video, tmp_path):
    good = make_video("good.mp4", 12)
    whole = make_video("fast.mp4", 24, faststart=True).read_bytes()
    (tmp_path / "late_cut.mp4").write_bytes(whole[: len(whole) // 2])  # header intact, frames cut
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 8)
    cut = make_video("cut.mp4", 24).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(cut[: len(cut) // 2])
    names = ["good.mp4", "missing.mp4", "empty.mp4", "noise.mp4", "cut.mp4", "late_cut.mp4"]
    samples = [VideoSample(str(tmp_path / n), 0) for n in names]
    samples[0] = str(good)  # plain paths work too
    report = check_dataset(samples, progress=False)
    assert report.total == 6 and not report.ok and report.seconds > 0
    # the index (every packet demuxed) finds the late cut without decoding to the end
    assert [b.index for b in report.bad] == [1, 2, 3, 4, 5]
    assert ["file not found" in report.bad[0].reason, "empty" in report.bad[1].reason] == [True, True]
    assert "truncated: the header lists 24 frames" in report.bad[4].reason
    decoded = check_dataset(samples, decode=True, num_workers=2, progress=False)
    assert decoded.bad == report.bad
    d = json.loads(json.dumps(decoded.to_dict()))
    assert d["bad_count"] == 5 and d["bad"][4]["path"].endswith("late_cut.mp4") and not d["ok"]
    assert d["corrected_count"] == 0 and d["slow"] == []  # bad files are only bad
    assert check_dataset(samples[:1], decode=True, progress=False).ok
