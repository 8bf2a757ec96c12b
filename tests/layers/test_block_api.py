"""The block's public names: ``use_scale``, ``norm_kind``, ``attention_map``; the old spellings
keep working for one release with a ``DeprecationWarning``."""

import pickle
import warnings

import pytest
import torch
from reference import randomise

from nonlocalnet import BLOCK_PRESETS, NonLocalBlock
from nonlocalnet.layers.norm import NORMS


def test_use_scale_is_the_flag():
    block = NonLocalBlock(8, use_scale=True)
    assert block.use_scale is True and block.logit_scale == pytest.approx(4**-0.5)
    assert "use_scale=True" in block.extra_repr()
    assert all("scale" not in preset for preset in BLOCK_PRESETS.values())
    assert BLOCK_PRESETS["released"]["use_scale"] == "softmax"


def test_scale_keyword_is_deprecated_but_works():
    with pytest.warns(DeprecationWarning, match=r"NonLocalBlock\(scale=\.\.\.\).*use_scale"):
        old = NonLocalBlock(8, mode="dot_product", scale=True)
    assert old.use_scale and old.logit_scale == pytest.approx(4**-0.5)
    with pytest.warns(DeprecationWarning, match="use_scale"):
        preset = NonLocalBlock.from_preset("released", 8, mode="dot_product", scale=True)
    assert preset.use_scale  # an explicit old-style scale overrides the preset's, as before
    with pytest.raises(TypeError, match="both scale= and use_scale="), pytest.warns(DeprecationWarning):
        NonLocalBlock(8, scale=False, use_scale=True)


def test_norm_kind_names_the_norm_and_norm_is_the_module():
    for kind in NORMS:
        block = NonLocalBlock(8, norm=kind)
        assert block.norm_kind == kind
        assert isinstance(block.norm, torch.nn.Module)
        assert f"norm={kind!r}" in block.extra_repr()
    with pytest.warns(DeprecationWarning, match="norm_type.*norm_kind"):
        assert NonLocalBlock(8, norm="affine").norm_type == "affine"


def test_attention_map_and_deprecated_attention_weights():
    block = NonLocalBlock(6, 4)
    randomise(block)
    block.eval()
    x = torch.randn(2, 6, 2, 4, 4)
    with torch.no_grad():
        new = block.attention_map(x, [(0, 1, 1)])
        with pytest.warns(DeprecationWarning, match=r"attention_weights\(\).*attention_map"):
            old = block.attention_weights(x, [(0, 1, 1)])
    assert new.shape == (2, 1, 2, 2, 2)
    torch.testing.assert_close(new, old)


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block = NonLocalBlock.from_preset("released", 8, use_scale=False, norm="none")
        assert block.norm_kind == "none" and not block.use_scale
        block.attention_map(torch.randn(1, 8, 2, 4, 4), [(0, 0, 0)])


def test_a_block_pickled_before_the_rename_loads():
    block = NonLocalBlock(8, norm="affine")
    block.__dict__["norm_type"] = block.__dict__.pop("norm_kind")  # the old attribute
    restored = pickle.loads(pickle.dumps(block))
    assert restored.norm_kind == "affine" and "norm_type" not in restored.__dict__
    assert "norm='affine'" in repr(restored)
