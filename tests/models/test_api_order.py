"""One argument order: the model first (``load_caffe2_checkpoint(model, path)`` like
``load_weights(model, path)`` and ``inflate_2d_to_3d(model, state)``); the data to save first
(``save_caffe2_pickle(blobs, path)`` like ``save_weights(model, path)``); other types get a clear
``TypeError``."""

import warnings

import pytest
import torch

from nonlocalnet.models import (
    build_model,
    export_caffe2_blobs,
    inflate_2d_to_3d,
    load_caffe2_checkpoint,
    load_weights,
    read_caffe2_pickle,
    save_caffe2_pickle,
    save_weights,
)


@pytest.fixture(scope="module")
def source():
    model = build_model("c2d_r50_8x8", num_classes=5, variant="released")
    with torch.no_grad():
        model.fc.weight.normal_()
    return model


def test_caffe2_model_first(source, tmp_path):
    path = tmp_path / "m.pkl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_caffe2_pickle(export_caffe2_blobs(source), path)
        fresh = build_model("c2d_r50_8x8", num_classes=5, variant="released")
        assert load_caffe2_checkpoint(fresh, path).ok
    assert torch.equal(fresh.fc.weight, source.fc.weight)
    assert set(read_caffe2_pickle(path)) == set(export_caffe2_blobs(source))


def test_wrong_types_are_named(tmp_path):
    model = build_model("c2d_r50_8x8", num_classes=5)
    with pytest.raises(
        TypeError, match=r"load_caffe2_checkpoint\(model, path\): model must be an nn.Module, got str"
    ):
        load_caffe2_checkpoint("a.pkl", "b.pkl")
    with pytest.raises(
        TypeError, match=r"load_weights\(model, path\): model must be an nn.Module, got PosixPath"
    ):
        load_weights(tmp_path / "w.safetensors", model)
    with pytest.raises(
        TypeError, match=r"inflate_2d_to_3d\(model, state_dict_2d\): model must be an nn.Module"
    ):
        inflate_2d_to_3d({}, model)
    with pytest.raises(TypeError, match=r"save_caffe2_pickle\(blobs, path\): blobs must be a mapping"):
        save_caffe2_pickle(3, tmp_path / "x.pkl")
    save_weights(model, tmp_path / "w.safetensors")
    assert load_weights(model, tmp_path / "w.safetensors") is model
