"""The authors' released files: the table of every Kinetics file, and the check on every loading
path that the network is the one the weights belong to (variant, frame geometry, BN form)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nonlocalnet.cli import main
from nonlocalnet.models import (
    RELEASE_URL,
    RELEASED_CHECKPOINTS,
    ReleasedModelMismatchError,
    build_model,
    caffe2_norm,
    export_caffe2_blobs,
    load_caffe2_checkpoint,
    load_model_file,
    load_weights,
    model_spec,
    read_model_file,
    read_weights_metadata,
    released_checkpoint_info,
    released_info_from_metadata,
    save_caffe2_pickle,
)
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import CONFIG_KEYS, build_model_from_config, initialise_model, load_model_weights

# The model zoo of the authors' README (facebookresearch/video-nonlocal-net): file -> registry
# model, BN form, clips (frames x sample rate), top-1/top-5 on Kinetics-400 val.
AUTHORS = {
    "c2d_baseline_32x2_IN_pretrain_400k.pkl": ("c2d_r50", "batchnorm", "32x2", (72.0, 90.0)),
    "c2d_nonlocal_32x2_IN_pretrain_400k.pkl": ("c2d_nl5_r50", "batchnorm", "32x2", (73.9, 91.0)),
    "i3d_baseline_32x2_IN_pretrain_400k.pkl": ("i3d_r50", "batchnorm", "32x2", (73.6, 90.8)),
    "i3d_nonlocal_32x2_IN_pretrain_400k.pkl": ("i3d_nl5_r50", "batchnorm", "32x2", (74.9, 91.6)),
    "i3d_baseline_128x1_I3D_pretrain_400k.pkl": ("i3d_r50", "affine", "128x1", (75.2, 92.0)),
    "i3d_nonlocal_128x1_I3D_pretrain_400k.pkl": ("i3d_nl5_r50", "affine", "128x1", (76.5, 92.7)),
    "c2d_baseline_8x8_IN_pretrain_400k.pkl": ("c2d_r50_8x8", "batchnorm", "8x8", (71.9, 90.0)),
    "c2d_nonlocal_8x8_IN_pretrain_400k.pkl": ("c2d_nl5_r50_8x8", "batchnorm", "8x8", (74.4, 91.4)),
    "i3d_baseline_8x8_IN_pretrain_400k.pkl": ("i3d_r50_8x8", "batchnorm", "8x8", (73.4, 90.9)),
    "i3d_nonlocal_8x8_IN_pretrain_400k.pkl": ("i3d_nl5_r50_8x8", "batchnorm", "8x8", (74.7, 91.6)),
    "i3d_baseline_32x4_I3D_pretrain_400k.pkl": ("i3d_r50_8x8", "affine", "32x4", (75.5, 92.0)),
    "i3d_nonlocal_32x4_I3D_pretrain_400k.pkl": ("i3d_nl5_r50_8x8", "affine", "32x4", (76.5, 92.6)),
    "i3d_baseline_8x8_IN_pretrain_300k.pkl": ("i3d_r50_8x8", "batchnorm", "8x8", (73.2, 90.8)),
    "i3d_baseline_8x8_IN_pretrain_600k_4gpu.pkl": ("i3d_r50_8x8", "batchnorm", "8x8", (73.0, 90.4)),
    "i3d_baseline_8x8_IN_pretrain_300k_4gpu.pkl": ("i3d_r50_8x8", "batchnorm", "8x8", (72.0, 90.1)),
}
FROZEN = "i3d_baseline_32x4_I3D_pretrain_400k.pkl"


def _meta(name, **kwargs):
    """A network's structure only (the checks read no weights)."""
    with torch.device("meta"):
        return build_model(name, **kwargs)


def _tiny_pickle(path, names=("conv1_w",)):
    """A file that only carries a released name: enough for the checks made before reading."""
    save_caffe2_pickle({n: np.zeros(1, np.float32) for n in names}, path)
    return path


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """The frozen-BN release i3d_baseline_32x4 in its layout (scale and shift, no statistics)."""
    model = build_model("i3d_r50_8x8", variant="released", backbone_norm="affine")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the convs are random already; scales and shifts start at 1 and 0
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen))
    blobs = export_caffe2_blobs(model)
    path = tmp_path_factory.mktemp("released") / FROZEN
    with open(path, "wb") as f:  # the released files are protocol 2 (save_caffe2_pickle, tested in
        pickle.dump({"blobs": blobs}, f, protocol=4)  # test_caffe2.py); 4 writes them 10x faster
    return path, blobs, model.state_dict()


@pytest.fixture(scope="module")
def converted(frozen, tmp_path_factory):
    """``nonlocalnet convert-caffe2 i3d_baseline_32x4_I3D_pretrain_400k.pkl OUT``, no flags."""
    out = tmp_path_factory.mktemp("converted") / "i3d_32x4.safetensors"
    code = main(["convert-caffe2", str(frozen[0]), str(out)])
    return code, out


def test_the_table_is_the_authors_zoo():
    assert sorted(RELEASED_CHECKPOINTS) == sorted(AUTHORS)
    for name, (model, norm, geometry, top) in AUTHORS.items():
        c = RELEASED_CHECKPOINTS[name]
        assert (c.model, c.variant, c.backbone_norm, c.geometry, c.top1_top5) == (
            model,
            "released",
            norm,
            geometry,
            top,
        )
        assert c.url == RELEASE_URL + name
        # the _8x8 networks have no temporal stride before res2: 8x8 and 32x4 clips
        assert model.endswith("_8x8") == (geometry in ("8x8", "32x4"))
        model_spec(c.model, variant=c.variant, backbone_norm=c.backbone_norm)
    assert released_checkpoint_info(Path("/data/i3d_nonlocal_32x4_I3D_pretrain_400k.pkl")).model == (
        "i3d_nl5_r50_8x8"
    )
    assert released_checkpoint_info("i3d_nonlocal_128x1_I3D_pretrain_400k").frames == 128
    assert released_checkpoint_info("my_model.pkl") is None


def test_frozen_bn_released_blocks_have_no_output_norm():
    """The authors' affine config trains the blocks without BN (NONLOCAL.USE_BN False)."""
    spec = model_spec("i3d_nl5_r50", variant="released", backbone_norm="affine")
    assert spec.nonlocal_options.norm == "none"
    assert spec.stages[1].nonlocal_options == {"temporal_group": 4}
    assert (
        model_spec("i3d_nl5_r50", variant="paper", backbone_norm="affine").nonlocal_options.norm == "affine"
    )


def test_load_caffe2_checks_the_network_before_reading(tmp_path):
    path = tmp_path / "c2d_nonlocal_32x2_IN_pretrain_400k.pkl"
    path.write_bytes(b"not read: the network is checked first")
    cases = [
        (
            {"variant": "paper"},
            "variant: paper, but c2d_nonlocal_32x2_IN_pretrain_400k.pkl is the authors' released variant: "
            "build it with variant='released'",
        ),
        (
            {"name": "c2d_nl5_r50_8x8"},
            "name: c2d_nl5_r50_8x8, but c2d_nonlocal_32x2_IN_pretrain_400k.pkl is c2d_nl5_r50",
        ),
        (
            {"backbone_norm": "affine"},
            "backbone_norm: affine, but c2d_nonlocal_32x2_IN_pretrain_400k.pkl holds BatchNorm statistics",
        ),
        (
            {"nonlocal_options": {"mode": "dot_product"}},
            "nonlocal_options['mode']: dot_product, but the blocks of c2d_nonlocal_32x2_IN_pretrain_400k.pkl "
            "are embedded_gaussian: build it with nonlocal_options={'mode': 'embedded_gaussian'}",
        ),
        (
            {"temporal_padding": "replicate"},
            "temporal_padding: replicate, but the authors' code pads time with zeros",
        ),
        ({"stride_on_1x1": True}, "differs from c2d_nl5_r50 (released variant) in stride_on_1x1"),
    ]
    for change, message in cases:
        kwargs = {"name": "c2d_nl5_r50", "variant": "released", **change}
        with pytest.raises(ReleasedModelMismatchError) as err:
            load_caffe2_checkpoint(_meta(kwargs.pop("name"), **kwargs), path)
        assert message in str(err.value), change
    with pytest.raises(ValueError, match="cannot read Caffe2 checkpoint"):  # the right one: read
        load_caffe2_checkpoint(_meta("c2d_nl5_r50", variant="released"), path)
    # a baseline file fits its network with (new, identity-initialised) non-local blocks added
    base = tmp_path / "c2d_baseline_32x2_IN_pretrain_400k.pkl"
    base.write_bytes(b"not read")
    with pytest.raises(ValueError, match="cannot read Caffe2 checkpoint"):
        load_caffe2_checkpoint(
            _meta("c2d_nl5_r50", variant="released", nonlocal_options={"mode": "dot_product"}), base
        )
    with pytest.raises(ReleasedModelMismatchError, match="name: c2d_nl5_r50_8x8, but c2d_baseline_32x2"):
        load_caffe2_checkpoint(_meta("c2d_nl5_r50_8x8", variant="released"), base)


def test_convert_refuses_what_the_file_name_contradicts(tmp_path, capsys):
    path = _tiny_pickle(tmp_path / "c2d_nonlocal_32x2_IN_pretrain_400k.pkl")
    out = tmp_path / "out.safetensors"
    assert main(["convert-caffe2", str(path), str(out), "--model", "c2d_nl5_r50_8x8"]) == 2
    err = capsys.readouterr().err
    assert "--model: c2d_nl5_r50_8x8, but c2d_nonlocal_32x2_IN_pretrain_400k.pkl is c2d_nl5_r50" in err
    assert "trained on 32x2 clips): pass --model c2d_nl5_r50" in err
    assert main(["convert-caffe2", str(path), str(out), "--norm", "affine"]) == 2
    assert (
        "holds BatchNorm statistics (it is not a frozen-BN model): pass --norm batchnorm"
        in capsys.readouterr().err
    )
    assert main(["convert-caffe2", str(_tiny_pickle(tmp_path / "mine.pkl")), str(out)]) == 2
    assert "mine.pkl is not one of the authors' released files" in capsys.readouterr().err
    assert not out.exists()


def test_frozen_bn_release_converts_without_flags(frozen, converted, capsys):
    code, out = converted
    assert code == 0
    assert read_weights_metadata(out) == {
        "model": "i3d_r50_8x8",
        "variant": "released",
        "backbone_norm": "affine",
        "source_file": FROZEN,
        "frames": "32",
        "sample_rate": "4",
    }
    written = load_file(out)
    for key, value in frozen[2].items():
        assert torch.equal(written[key], value), key


def test_frozen_bn_content_names_the_fix(frozen, tmp_path, capsys):
    path, blobs, _ = frozen
    assert caffe2_norm(blobs) == "affine"
    assert caffe2_norm(export_caffe2_blobs(_meta("c2d_r50_8x8").to_empty(device="cpu"))) == "batchnorm"
    with pytest.raises(ValueError, match="missing from the file: res_conv1_bn_rm") as err:
        load_caffe2_checkpoint(build_model("i3d_r50_8x8", variant="released"), blobs)
    assert "no BN statistics, only affine scale and shift (a frozen-BN release)" in str(err.value)
    assert "--norm affine" in str(err.value) and "model.backbone_norm: affine" in str(err.value)
    renamed = tmp_path / "renamed.pkl"  # not a released name: the BN form is read from the file
    renamed.symlink_to(path)
    out = tmp_path / "out.safetensors"
    argv = ["convert-caffe2", str(renamed), str(out), "--model", "i3d_r50_8x8", "--norm", "batchnorm"]
    assert main(argv) == 2
    assert "--norm: batchnorm, but renamed.pkl is a frozen-BN model" in capsys.readouterr().err


def test_metadata_of_other_files():
    """Weights converted from a file of another name: the metadata's model, the BN form it names
    or, without one, the state dict's (statistics or not)."""
    meta = {"model": "c2d_nl5_r50_8x8", "variant": "released", "source_file": "finetuned.pkl"}
    info = released_info_from_metadata(meta, source="w.safetensors", tensor_names=["bn1.running_var"])
    assert (info.file_name, info.model, info.backbone_norm, info.geometry) == (
        "finetuned.pkl",
        "c2d_nl5_r50_8x8",
        "batchnorm",
        "8x8",
    )
    assert (
        released_info_from_metadata(meta, source="w.safetensors", tensor_names=["bn1.weight"]).backbone_norm
        == "affine"
    )
    assert released_info_from_metadata({"model": "c2d_r50"}, source="run/model.safetensors") is None
    with pytest.raises(
        ValueError, match="w.safetensors: its metadata says variant 'released' but names model 'r50'"
    ):
        released_info_from_metadata({"model": "r50", "variant": "released"}, source="w.safetensors")


def _config(**model):
    return config_from_dict(
        {"model": {"name": "i3d_r50_8x8", "backbone_norm": "affine", "variant": "released", **model}}
    )


def test_converted_weights_are_checked_by_their_metadata(frozen, converted):
    _, out = converted
    with pytest.raises(ReleasedModelMismatchError, match="variant: paper, but i3d_32x4.safetensors is the"):
        load_weights(_meta("i3d_r50_8x8", variant="paper", backbone_norm="affine"), out)
    weights = read_model_file(out)
    assert weights.released == RELEASED_CHECKPOINTS[FROZEN]  # the metadata names the source file
    with pytest.raises(
        ReleasedModelMismatchError, match="model.backbone_norm: batchnorm, but i3d_32x4.safetensors is"
    ):
        load_model_file(_meta("i3d_r50_8x8", variant="released"), weights, keys=CONFIG_KEYS)
    # model.init=weights names the config key
    cfg = _config(variant="paper", init="weights", init_path=str(out))
    with torch.device("meta"):
        net = build_model_from_config(cfg.model)
    with pytest.raises(ReleasedModelMismatchError, match="set model.variant=released"):
        initialise_model(net, cfg.model)
    # eval and predict load through load_model_weights: overrides that change the network too
    cfg = _config(overrides={"stride_on_1x1": True})
    with torch.device("meta"):
        net = build_model_from_config(cfg.model)
    with pytest.raises(
        ReleasedModelMismatchError, match="model.overrides/nonlocal_options/spec: .* stride_on_1x1"
    ):
        load_model_weights(net, weights, cfg)
    # the right network loads, and the report says which clips the authors used
    cfg = _config(init="weights", init_path=str(out))
    net = build_model_from_config(cfg.model)
    report = initialise_model(net, cfg.model)
    assert "clips of 32 frames every 4: data.clip_length 32, data.stride 4" in report
    assert torch.equal(net.fc.weight, frozen[2]["fc.weight"])


def test_caffe2_init_checks_the_network(tmp_path):
    path = _tiny_pickle(tmp_path / "i3d_nonlocal_8x8_IN_pretrain_400k.pkl")
    cfg = config_from_dict({"model": {"name": "i3d_nl5_r50_8x8", "init": "caffe2", "init_path": str(path)}})
    with torch.device("meta"):
        net = build_model_from_config(cfg.model)
    with pytest.raises(
        ReleasedModelMismatchError,
        match="model.variant: paper, but i3d_nonlocal_8x8_IN_pretrain_400k.pkl is the authors' released "
        "variant: set model.variant=released",
    ):
        initialise_model(net, cfg.model)
    # another name: the BN form is read from the file (scale and shift only: frozen BN)
    path = _tiny_pickle(tmp_path / "finetuned.pkl", names=("res_conv1_bn_s", "res_conv1_bn_b"))
    cfg.model.init_path, cfg.model.variant = str(path), "released"
    with pytest.raises(
        ReleasedModelMismatchError, match="model.backbone_norm: batchnorm, but finetuned.pkl is a frozen-BN"
    ):
        initialise_model(net, cfg.model)
