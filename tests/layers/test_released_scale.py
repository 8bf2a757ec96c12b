"""The released preset scales the logits under its softmax only, as the authors' Caffe2 code
(``nonlocal_helper.py``: ``USE_SCALE`` multiplies ``theta^T phi`` by ``dim_inner ** -0.5`` inside
``if USE_SOFTMAX``; the dot product divides by the number of keys, unscaled)."""

import math

import pytest
import torch
from reference import block_maps, conv1x1, randomise

from nonlocalnet import NonLocalBlock, NonLocalOptions
from nonlocalnet.models import build_model


def released_reference(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """z = BN(W_z y) + x of the released formula in float64, written from the Caffe2 graph:
    affinity = theta^T phi; softmax(affinity * dim_inner**-0.5) or affinity / M."""
    theta, phi, g = block_maps(block, x)
    b, ci = x.shape[0], block.inter_channels
    t = theta.reshape(b, theta.shape[1], -1)  # (B, Ck, N)
    p = phi.reshape(b, phi.shape[1], -1)  # (B, Ck, M)
    v = g.reshape(b, ci, -1)  # (B, Ci, M)
    m = p.shape[2]
    if block.mode == "concatenation":  # not in the released code: the paper's f, unscaled
        w = block.concat_project.weight.detach().double().reshape(-1)
        a = torch.einsum("c,bcn->bn", w[: t.shape[1]], t)
        bb = torch.einsum("c,bcm->bm", w[t.shape[1] :], p)
        prob = torch.relu(a[:, :, None] + bb[:, None, :]) / m
    else:
        affinity = torch.einsum("bcn,bcm->bnm", t, p)
        if block.mode == "embedded_gaussian":
            prob = (affinity * ci**-0.5).softmax(dim=-1)
        else:
            prob = affinity / m
    y = torch.einsum("bnm,bcm->bcn", prob, v).reshape(b, ci, *x.shape[2:])
    z = conv1x1(block.out.weight, block.out.bias, y)
    bn = block.norm
    shape = (1, -1, 1, 1, 1)
    z = (z - bn.running_mean.double().reshape(shape)) / torch.sqrt(
        bn.running_var.double().reshape(shape) + bn.eps
    )
    z = z * bn.weight.detach().double().reshape(shape) + bn.bias.detach().double().reshape(shape)
    return z + x.double()


def _x(channels=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 2, 4, 4, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation"])
def test_released_preset_matches_released_formula(mode):
    block = NonLocalBlock(8, options=NonLocalOptions.released(), mode=mode)
    randomise(block)
    block = block.double().eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(block(x), released_reference(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation"])
def test_released_options_with_the_mode_match_released_formula(mode):
    """``NonLocalBlock(C, options=NonLocalOptions.released(mode=...))`` (the documented spelling)."""
    block = NonLocalBlock(8, options=NonLocalOptions.released(mode=mode))
    randomise(block, seed=3)
    block = block.double().eval()
    x = _x(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), released_reference(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["dot_product", "concatenation"])
def test_released_models_do_not_scale_unnormalised_modes(mode):
    model = build_model("c2d_nl5_r50_8x8", num_classes=3, variant="released", nonlocal_options={"mode": mode})
    blocks = [m for m in model.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == 5
    assert all(b.logit_scale == 1.0 and not b.use_scale for b in blocks)
    block = blocks[0]
    randomise(block, seed=5)
    block = block.double().eval()
    x = _x(block.in_channels, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), released_reference(block, x), atol=1e-10, rtol=1e-10)


def test_released_softmax_modes_keep_their_scale():
    eg = NonLocalBlock(8, options=NonLocalOptions.released())
    assert eg.use_scale and eg.logit_scale == pytest.approx(4**-0.5)
    # the raw-feature Gaussian (not in the released code) scales by its key width, the input's
    g = NonLocalBlock(8, options=NonLocalOptions.released(), mode="gaussian")
    assert g.use_scale and g.logit_scale == pytest.approx(8**-0.5)


@pytest.mark.parametrize("mode", ["dot_product", "concatenation"])
def test_explicit_use_scale_is_honoured_in_every_mode(mode):
    """An explicit ``use_scale=True`` scales the logits whatever the mode (documented); only the
    preset's ``"softmax"`` restricts it to the softmax modes."""
    block = NonLocalBlock(8, options=NonLocalOptions.released(), mode=mode, use_scale=True)
    assert block.use_scale and block.logit_scale == pytest.approx(4**-0.5)
    randomise(block)
    x = _x().float()
    unscaled = NonLocalBlock(8, options=NonLocalOptions.released(), mode=mode)
    unscaled.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert not torch.allclose(block.eval()(x), unscaled.eval()(x), atol=1e-4)
    assert math.isclose(NonLocalBlock(8, mode=mode, use_scale="softmax").logit_scale, 1.0)


def test_use_scale_rejects_other_values():
    with pytest.raises(ValueError, match="use_scale must be True, False or 'softmax'"):
        NonLocalBlock(8, use_scale="yes")
