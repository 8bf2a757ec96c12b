"""The block's public names: ``NonLocalOptions`` (one frozen value, checked once), the keyword
overrides, ``options.norm`` and the ``norm`` module, ``use_scale``, ``attention_map``."""

import dataclasses
import pickle

import pytest
import torch
from reference import randomise

from nonlocalnet import NonLocalBlock, NonLocalOptions
from nonlocalnet.layers.norm import NORMS


def test_use_scale_is_the_flag():
    block = NonLocalBlock(8, use_scale=True)
    assert block.use_scale is True and block.logit_scale == pytest.approx(4**-0.5)
    assert "use_scale=True" in block.extra_repr()
    assert NonLocalOptions.released().use_scale == "softmax"


def test_options_are_frozen_and_overrides_are_field_names():
    options = NonLocalOptions.released(mode="dot_product")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "gaussian"  # type: ignore[misc]
    block = NonLocalBlock(8, options=options, norm="none")
    assert block.options == options.replace(norm="none") and block.mode == "dot_product"
    assert NonLocalBlock(8, options={"mode": "gaussian"}).mode == "gaussian"  # a mapping of fields
    with pytest.raises(ValueError, match=r"unknown non-local block option\(s\) \['scale'\]; valid: \['mode'"):
        NonLocalBlock(8, scale=True)
    with pytest.raises(
        TypeError, match="options must be a NonLocalOptions or a mapping of its fields, got str"
    ):
        NonLocalBlock(8, options="released")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "cosine"}, "unknown mode 'cosine'"),
        ({"norm": "layernorm"}, "unknown norm 'layernorm'"),
        ({"init": "xavier"}, "unknown init 'xavier'"),
        ({"projection": "fft"}, "unknown projection 'fft'"),
        ({"attend": "all"}, "unknown attend 'all'"),
        ({"temporal_group": 0}, "temporal_group must be a positive int"),
        ({"attend": "space", "temporal_group": 2}, "cannot be combined"),
        ({"sub_sample": 1}, "sub_sample must be a bool"),
        ({"init_std": 0.0}, "init_std must be a finite number > 0"),
        ({"bn_eps": -1e-5}, "bn_eps must be a finite number >= 0"),
    ],
)
def test_options_are_checked_when_made(kwargs, match):
    with pytest.raises(ValueError if "bool" not in match else TypeError, match=match):
        NonLocalOptions(**kwargs)


def test_options_checked_against_the_dimensionality():
    assert NonLocalOptions().validate(3) == (1, 2, 2)
    assert NonLocalOptions(pool_kernel=[2, 2]).validate(2) == (2, 2)
    assert NonLocalOptions(sub_sample=False).validate(1) is None
    with pytest.raises(ValueError, match=r"pool_kernel must be a positive int or 2 positive ints"):
        NonLocalBlock(8, dim=2, pool_kernel=(1, 2, 2))
    with pytest.raises(ValueError, match="temporal_group needs dim=3"):
        NonLocalBlock(8, dim=2, temporal_group=2)
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        NonLocalBlock(8, dim=4)


def test_norm_option_names_the_norm_and_norm_is_the_module():
    for kind in NORMS:
        block = NonLocalBlock(8, norm=kind)
        assert block.options.norm == kind
        assert isinstance(block.norm, torch.nn.Module)
        assert f"norm={kind!r}" in block.extra_repr()


def test_attention_map_rows_sum_to_one():
    block = NonLocalBlock(6, 4)
    randomise(block)
    block.eval()
    x = torch.randn(2, 6, 2, 4, 4)
    with torch.no_grad():
        weights = block.attention_map(x, [(0, 1, 1)])
    assert weights.shape == (2, 1, 2, 2, 2)
    torch.testing.assert_close(weights.sum(dim=(2, 3, 4)), torch.ones(2, 1))


def test_a_block_pickles_with_its_options():
    block = NonLocalBlock(8, options=NonLocalOptions.released(norm="affine"))
    restored = pickle.loads(pickle.dumps(block))
    assert restored.options == block.options and "norm='affine'" in repr(restored)
