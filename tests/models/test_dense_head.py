"""Fully convolutional testing: time pooled over the clip, the classifier on training-size windows."""

import pytest
import torch

from nonlocalnet.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = (
        build_model("c2d_nl5_r50", num_classes=3, stem_width=8, conv1_temporal_stride=1, pool2_temporal=0)
        .double()
        .eval()
    )
    torch.nn.init.normal_(m.fc.weight, std=1.0)  # logits far enough apart to tell the heads apart
    return m


def _reference_scores(model, x: torch.Tensor, window: int) -> torch.Tensor:
    """The released code's test head by hand, in float64: res5 averaged over time, then a
    window x window average at every stride-1 offset, the classifier, softmax, mean."""
    f = model.features(x).mean(dim=2)
    h, w = f.shape[-2:]
    kh, kw = min(window, h), min(window, w)
    probs = []
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            pooled = f[:, :, i : i + kh, j : j + kw].mean(dim=(2, 3))
            probs.append(model.fc(pooled).softmax(dim=1))
    return torch.stack(probs).mean(0)


@pytest.mark.parametrize("size,window", [(64, 2), (96, 2), (96, 3), (64, 5), (96, None)])
def test_fully_convolutional_scores_match_the_reference(model, size, window):
    x = torch.randn(2, 3, 4, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.fully_convolutional_scores(x, window)
        want = _reference_scores(model, x, window if window is not None else 10**6)
        per_frame = model.fc(model.features(x).permute(0, 2, 3, 4, 1)).softmax(-1).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, per_frame)  # time is pooled before the classifier, not after


def test_a_training_size_map_gives_the_softmax_of_forward(model):
    x = torch.randn(1, 3, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        window = model.res5_size(64)
        torch.testing.assert_close(model.fully_convolutional_scores(x, window), model(x).softmax(1))


@pytest.mark.parametrize("size", [32, 63, 64, 100, 224, 256])
def test_res5_size_matches_the_feature_map(model, size):
    with torch.no_grad():
        f = model.features(torch.zeros(1, 3, 4, size, size, dtype=torch.float64))
    assert f.shape[-1] == model.res5_size(size)


def test_bad_window_and_size_are_errors(model):
    with pytest.raises(ValueError, match="window"):
        model.forward_dense(torch.zeros(1, 3, 4, 96, 96, dtype=torch.float64), window=0)
    with pytest.raises(ValueError, match="size"):
        model.res5_size(0)
