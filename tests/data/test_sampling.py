import itertools

import pytest
import torch

from nonlocalnet.data import sampling


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_train_clip_is_a_strided_window_inside_the_video():
    starts = set()
    for seed in range(300):
        idx = sampling.train_clip_indices(100, 32, 2, generator=gen(seed))
        assert len(idx) == 32 and idx == list(range(idx[0], idx[0] + 64, 2))
        assert 0 <= idx[0] <= 100 - 64 and idx[-1] <= 99 - 1
        starts.add(idx[0])
    assert starts == set(range(37))  # every start in [0, N - 64] occurs


def test_train_clip_paper_settings_and_reproducibility():
    a = sampling.train_clip_indices(300, 8, 8, generator=gen(5))
    assert a == sampling.train_clip_indices(300, 8, 8, generator=gen(5))
    assert [j - i for i, j in itertools.pairwise(a)] == [8] * 7
    assert sampling.train_clip_indices(64, 32, 2, generator=gen(1)) == list(range(0, 64, 2))


def test_train_clip_wraps_around_short_videos():
    idx = sampling.train_clip_indices(10, 8, 2, generator=gen(0))
    assert idx == [0, 2, 4, 6, 8, 0, 2, 4]
    assert sampling.train_clip_indices(1, 4, 3, generator=gen(0)) == [0, 0, 0, 0]
    assert sampling.train_clip_indices(5, 4, 1, generator=gen(0)) == [0, 1, 2, 3]  # no wrap, start 0 or 1


def test_test_clips_evenly_spaced():
    clips = sampling.test_clip_indices(300, 32, 2, 10)
    starts = [c[0] for c in clips]
    assert starts[0] == 0 and clips[-1][-1] == 300 - 2  # first at the start, last at the end
    assert starts == [(2 * k * 236 + 9) // 18 for k in range(10)]
    assert all(c == list(range(c[0], c[0] + 64, 2)) for c in clips)
    (centre,) = sampling.test_clip_indices(300, 32, 2, 1)
    assert centre[0] == 118  # (300 - 64) / 2
    assert sampling.test_clip_indices(65, 32, 2, 1)[0][0] == 1  # 0.5 rounds up
    assert sampling.test_clip_indices(50, 4, 5, 2) == [[0, 5, 10, 15], [30, 35, 40, 45]]


def test_test_clips_wrap_around_short_videos():
    clips = sampling.test_clip_indices(20, 16, 2, 3)
    assert clips == [[(2 * k) % 20 for k in range(16)]] * 3


@pytest.mark.parametrize("bad", [(0, 4, 2), (10, 0, 2), (10, 4, 0), (10.0, 4, 2), (True, 4, 2)])
def test_validation(bad):
    with pytest.raises(ValueError, match="positive integer"):
        sampling.train_clip_indices(*bad, generator=gen())
    with pytest.raises(ValueError, match="positive integer"):
        sampling.test_clip_indices(*bad, 2)
    with pytest.raises(ValueError, match="num_clips"):
        sampling.test_clip_indices(10, 4, 2, 0)
