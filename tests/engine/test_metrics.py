import numpy as np
import pytest
import torch

from nonlocalnet.engine import topk_correct
from nonlocalnet.tasks.video import ViewScores


def test_video_accuracy_averages_softmax_over_views_by_hand():
    # 2 videos x 2 views, 3 classes. Video 0 (label 0): views say [0.6,0.3,0.1] and
    # [0.1,0.5,0.4] -> mean [0.35,0.4,0.25] -> predicts 1 (wrong); clip: 1 of 2 views right.
    # Video 1 (label 2): [0.2,0.2,0.6] and [0.5,0.1,0.4] -> mean [0.35,0.15,0.5] -> 2 (right).
    scores = ViewScores(num_classes=3, views_per_video=2)
    views = {
        (0, 0): [0.6, 0.3, 0.1],
        (0, 1): [0.1, 0.5, 0.4],
        (1, 0): [0.2, 0.2, 0.6],
        (1, 1): [0.5, 0.1, 0.4],
    }
    for (video, view), p in views.items():
        scores.add(video, view, torch.tensor(p), label=0 if video == 0 else 2)
    r = scores.result()
    assert r.clip_top1 == pytest.approx(2 / 4)
    assert r.video_top1 == pytest.approx(1 / 2)
    assert r.video_top5 == 1.0  # 3 classes: top-5 is everything
    np.testing.assert_array_equal(r.confusion, [[0, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert r.per_class_accuracy[0] == 0.0 and r.per_class_accuracy[2] == 1.0
    assert np.isnan(r.per_class_accuracy[1])
    assert "clip accuracy (1 view)" in r.summary() and "video accuracy (2 views averaged)" in r.summary()


def test_merge_across_ranks_and_incomplete_videos():
    a, b = ViewScores(2, 2), ViewScores(2, 2)
    a.add(0, 0, torch.tensor([0.9, 0.1]), 0)
    b.add(0, 1, torch.tensor([0.8, 0.2]), 0)
    b.add(1, 0, torch.tensor([0.3, 0.7]), 1)
    a.merge(b.state())
    r = a.result()
    assert r.num_videos == 2 and r.incomplete_videos == [1] and r.video_top1 == 1.0


def test_topk_and_errors():
    s = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_correct(s, torch.tensor([2, 2]), 1).tolist() == [False, False]
    assert topk_correct(s, torch.tensor([2, 2]), 2).tolist() == [True, False]
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(3,\)"):
        ViewScores(3, 1).add(0, 0, torch.ones(4), 0)
    with pytest.raises(ValueError, match="no video was evaluated"):
        ViewScores(3, 1).result()
