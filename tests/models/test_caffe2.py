import os
import pickle

import numpy as np
import pytest
import torch
from reference import randomise

from nonlocalnet.cli import main
from nonlocalnet.models import (
    RELEASED_CHECKPOINTS,
    build_model,
    export_caffe2_blobs,
    load_caffe2_checkpoint,
    load_weights,
    read_caffe2_pickle,
    save_caffe2_pickle,
)


def _released_fixture(model_name, path, seed=0):
    """A pickle with the released key set of ``model_name``: weights and BN statistics under the
    Caffe2 names, plus the solver blobs the released files carry (lr, iter, *_momentum)."""
    model = build_model(model_name, variant="released")
    randomise(model, seed=seed)
    blobs = export_caffe2_blobs(model)
    for name in list(blobs):
        if name.endswith(("_w", "_b", "_s")):
            blobs[name + "_momentum"] = np.zeros_like(blobs[name])
    blobs["lr"] = np.array([0.01], dtype=np.float32)
    blobs["model_iter"] = np.array([400000], dtype=np.int64)
    save_caffe2_pickle(blobs, path)
    return model, blobs


# one released BatchNorm file per network (the frozen-BN ones: test_affine_models_round_trip_strictly)
_BN_RELEASES = sorted(
    {c.model: c.file_name for c in RELEASED_CHECKPOINTS.values() if c.backbone_norm == "batchnorm"}.items()
)


@pytest.mark.parametrize("model_name,released", _BN_RELEASES)
def test_round_trip_of_every_released_model(model_name, released, tmp_path):
    assert len(_BN_RELEASES) == 8
    path = tmp_path / released  # the released name: the load checks the network first
    src, blobs = _released_fixture(model_name, path)
    assert "conv1_w" in blobs and "res_conv1_bn_riv" in blobs and "pred_w" in blobs
    assert blobs["res2_0_branch1_w"].shape == (256, 64, 1, 1, 1)
    nonlocal_blobs = [n for n in blobs if n.startswith("nonlocal_") and not n.endswith("_momentum")]
    if "nonlocal" in released:
        assert "nonlocal_conv3_1_theta_w" in blobs and "nonlocal_conv4_5_bn_riv" in blobs
        assert blobs["nonlocal_conv3_1_theta_w"].shape == (256, 512, 1, 1, 1)
        assert len(nonlocal_blobs) == 5 * (8 + 4)  # theta/phi/g/out w+b, bn s/b/rm/riv
    else:
        assert nonlocal_blobs == []
    loaded = build_model(model_name, variant="released")
    report = load_caffe2_checkpoint(loaded, path)
    assert report.ok and report.missing == [] and report.unexpected == []
    assert "lr" in report.ignored and "model_iter" in report.ignored
    for key, value in src.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[key], value), key
    # and back: exporting the loaded model reproduces the file's weights bit for bit
    again = export_caffe2_blobs(loaded)
    for name, array in again.items():
        assert np.array_equal(array, blobs[name]), name


def test_flat_dict_and_python2_style_pickle(tmp_path):
    model, blobs = _released_fixture("c2d_r50_8x8", tmp_path / "a.pkl", seed=1)
    flat = tmp_path / "flat.pkl"
    with open(flat, "wb") as f:  # bytes keys, as a Python 2 str pickled and read with latin1
        pickle.dump({k.encode("latin1"): v for k, v in blobs.items()}, f, protocol=2)
    fresh = build_model("c2d_r50_8x8", variant="released")
    load_caffe2_checkpoint(fresh, flat)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_problems_are_reported_and_nothing_is_loaded(tmp_path):
    _, blobs = _released_fixture("c2d_nl5_r50", tmp_path / "a.pkl")
    bad = dict(blobs)
    del bad["res3_2_branch2b_w"]
    bad["res9_0_branch2a_w"] = np.zeros((1,), np.float32)
    bad["res2_0_branch2c_bn_s"] = np.zeros((3,), np.float32)
    model = build_model("c2d_nl5_r50", variant="released")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_caffe2_checkpoint(model, bad)
    text = str(err.value)
    assert "nothing was loaded" in text
    assert "missing from the file: res3_2_branch2b_w" in text
    assert "res9_0_branch2a_w" in text and "res2_0_branch2c_bn_s: file (3,) vs model (256,)" in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_caffe2_checkpoint(model, bad, strict=False)
    assert report.missing == ["res3_2_branch2b_w"] and len(report.mismatched) == 1
    # a baseline checkpoint into a non-local model: every non-local blob is listed as missing
    _, base = _released_fixture("c2d_r50", tmp_path / "b.pkl")
    with pytest.raises(ValueError, match=r"60 missing from the file: nonlocal_conv3_1_theta_w"):
        load_caffe2_checkpoint(build_model("c2d_nl5_r50", variant="released"), base)


def test_affine_only_file(tmp_path):
    _, blobs = _released_fixture("i3d_r50_8x8", tmp_path / "a.pkl")
    affine = {k: v for k, v in blobs.items() if not k.endswith(("_rm", "_riv"))}
    with pytest.raises(ValueError, match="res_conv1_bn_rm"):
        load_caffe2_checkpoint(build_model("i3d_r50_8x8", variant="released"), affine)
    model = build_model("i3d_r50_8x8", variant="released")
    report = load_caffe2_checkpoint(model, affine, strict=False)
    assert "res_conv1_bn_riv" in report.defaulted and torch.equal(model.bn1.running_var, torch.ones(64))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    data = pickle.dumps({"blobs": {"conv1_w": payload}}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os)\.system"):
        read_caffe2_pickle(data)
    assert not marker.exists()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError):
        load_caffe2_checkpoint(build_model("c2d_r50_8x8", variant="released"), evil)
    assert not marker.exists()
    # a plain pickle.loads would have run it: the test is meaningful
    pickle.loads(data)
    assert marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl"
    _released_fixture("c2d_r50_8x8", path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read Caffe2 checkpoint"):
        read_caffe2_pickle(path)


def test_convert_caffe2_cli(tmp_path, capsys):
    src, _ = _released_fixture("i3d_nl5_r50", tmp_path / "i3d_nonlocal_32x2.pkl")
    out = tmp_path / "i3d.safetensors"
    code = main(
        ["convert-caffe2", str(tmp_path / "i3d_nonlocal_32x2.pkl"), str(out), "--model", "i3d_nl5_r50"]
    )
    assert code == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    loaded = load_weights(build_model("i3d_nl5_r50", variant="released"), out)
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert (
        main(["convert-caffe2", str(tmp_path / "i3d_nonlocal_32x2.pkl"), str(out), "--model", "c2d_r50"]) == 2
    )
    assert "does not match the model" in capsys.readouterr().err


def test_info_cli(capsys):
    assert main(["info", "c2d_r101"]) == 0
    out = capsys.readouterr().out
    assert "parameters   43.32 M" in out and "GFLOPs       35.29" in out and "73.1/91.0" in out
    assert main(["info", "c2d_r5"]) == 2
    assert "unknown model 'c2d_r5'" in capsys.readouterr().err


def test_affine_models_round_trip_strictly(tmp_path):
    """The authors' affine (frozen-BN) models: only _bn_s/_bn_b blobs, non-local blocks without
    an output norm (their affine config: NONLOCAL.USE_BN False, W_z zero-initialised), res3
    attention within groups of 4 frames; they load strictly into build_model(..., backbone_norm="affine")."""
    from nonlocalnet import NonLocalBlock

    model = build_model("i3d_nl5_r50_8x8", variant="released", backbone_norm="affine")
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, NonLocalBlock)}
    assert all(isinstance(b.norm, torch.nn.Identity) and not b.out.weight.any() for b in blocks.values())
    assert [n for n, b in blocks.items() if b.temporal_group == 4] == ["layer2.1.nl", "layer2.3.nl"]
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():  # identity at init: the same output as the affine baseline
        base = build_model("i3d_r50_8x8", variant="released", backbone_norm="affine")
        base.load_state_dict({k: v for k, v in model.state_dict().items() if ".nl." not in k})
        torch.testing.assert_close(model.eval()(x), base.eval()(x))
    randomise(model, seed=2)
    blobs = export_caffe2_blobs(model)
    assert "res_conv1_bn_s" in blobs and not any(k.endswith(("_rm", "_riv")) for k in blobs)
    assert "nonlocal_conv3_1_out_w" in blobs and not any(k.startswith("nonlocal_conv3_1_bn") for k in blobs)
    path = tmp_path / "affine.pkl"
    save_caffe2_pickle(blobs, path)
    fresh = build_model("i3d_nl5_r50_8x8", variant="released", backbone_norm="affine")
    assert load_caffe2_checkpoint(fresh, path).ok
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(ValueError, match="in the file but not in the model: res_conv1_bn_rm"):
        _, bn_blobs = _released_fixture("i3d_r50_8x8", tmp_path / "bn.pkl")
        load_caffe2_checkpoint(
            build_model("i3d_r50_8x8", variant="released", backbone_norm="affine"), bn_blobs
        )


def test_partial_load_keeps_statistics_of_layers_the_file_lacks(tmp_path):
    """Issue 17 item 11: a file holding only the non-local blobs must not reset the trained
    backbone's BN statistics; only layers whose scale/shift came from the file get defaults."""
    _, blobs = _released_fixture("c2d_nl5_r50", tmp_path / "a.pkl", seed=3)
    nl_only = {k: v for k, v in blobs.items() if k.startswith("nonlocal_") and not k.endswith("_momentum")}
    assert len(nl_only) == 60
    model = build_model("c2d_nl5_r50", variant="released")
    randomise(model, seed=4)  # a "trained" model: statistics away from 0 / 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_caffe2_checkpoint(model, nl_only, strict=False)
    assert report.defaulted == []
    assert len(report.loaded) == 60
    state = model.state_dict()
    for key, value in before.items():
        if ".nl." not in key:
            assert torch.equal(state[key], value), key
    backbone_stats = [k for k in before if k.endswith(("running_mean", "running_var")) and ".nl." not in k]
    assert len(backbone_stats) == 106
    # every backbone key is listed as missing (weights and statistics), nothing is hidden
    assert "res_conv1_bn_rm" in report.missing and "res2_0_branch2a_w" in report.missing
    # the non-local statistics came from the file
    assert torch.equal(
        model.layer2[1].nl.norm.running_var, torch.from_numpy(blobs["nonlocal_conv3_1_bn_riv"])
    )
    # an affine-only non-local block plus nothing else: only that block's statistics are defaulted
    affine_nl = {k: v for k, v in nl_only.items() if not k.endswith(("_rm", "_riv"))}
    model = build_model("c2d_nl5_r50", variant="released")
    randomise(model, seed=4)
    report = load_caffe2_checkpoint(model, affine_nl, strict=False)
    assert sorted(report.defaulted) == sorted(k for k in nl_only if k.endswith(("_rm", "_riv")))
    assert torch.equal(model.bn1.running_var, before["bn1.running_var"])
    assert torch.equal(model.layer2[1].nl.norm.running_var, torch.ones(512))
