"""Named weights: the catalogue, downloads and conversions through it (a 127.0.0.1 server), and
loading by name: ``build_model(weights=...)``, ``load_named_weights``, ``model.init``, the CLI."""

import io
import multiprocessing
import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from weights_server import RELEASED, serving

from nonlocalnet.cli import main
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.models import (
    RELEASED_CHECKPOINTS,
    ReleasedModelMismatchError,
    StageSpec,
    WeightsEntry,
    build_model,
    get_weights,
    list_weights,
    load_named_weights,
    model_info,
    model_spec,
    read_model_file,
    weights_file,
)
from nonlocalnet.models.download import CACHE_DIR_ENV, ChecksumError, DownloadError
from nonlocalnet.models.insert import NONLOCAL_ATTR
from nonlocalnet.models.zoo import MIRROR_ENV, cache_paths
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import build_model_from_config, initialise_model

AUTHORS = "https://dl.fbaipublicfiles.com/video-nonlocal/"


@pytest.fixture
def server(monkeypatch):
    with serving(monkeypatch) as s:
        yield s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(url: str, **fields) -> WeightsEntry:
    """An entry of one's own for a tiny served file."""
    base = {"name": "tiny", "url": url, "kind": "imagenet", "dataset": "test", "num_classes": 2}
    return WeightsEntry(**{**base, "licence": "test", "reference": "test", **fields})


def _archive(member: str, blobs: dict) -> bytes:
    """A .tar.gz holding ``member``: a Caffe2 pickle of ``blobs``, as pretrained_model.tar.gz."""
    data = pickle.dumps({"blobs": blobs}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BLOBS_2D = {
    "conv1_w": np.arange(2 * 3 * 7 * 7, dtype=np.float32).reshape(2, 3, 7, 7),
    "res_conv1_bn_s": np.ones(2, np.float32),
    "conv1_w_momentum": np.zeros((2, 3, 7, 7), np.float32),  # a solver blob: left out
    "lr": np.array([0.1], np.float32),
}


# the catalogue


def test_every_released_kinetics_file_is_an_entry_with_its_network():
    assert len(RELEASED_CHECKPOINTS) == 15  # the authors' README lists 15 Kinetics-400 .pkl files
    assert sorted(
        get_weights(n).file_name for n in list_weights(kind="kinetics") if not get_weights(n).member
    ) == (sorted(RELEASED_CHECKPOINTS))
    for file_name, info in RELEASED_CHECKPOINTS.items():
        e = get_weights(file_name)  # the file name is an alias of the entry
        assert e.name == file_name.removesuffix(".pkl") and e.url == AUTHORS + file_name
        assert (e.model, e.variant, e.backbone_norm) == (info.model, "released", info.backbone_norm)
        assert (e.frames, e.sample_rate) == (info.frames, info.sample_rate)
        assert (e.top1, e.top5) == info.top1_top5 and e.num_classes == 400
        assert e.licence == "CC-BY-NC-4.0" and e.sha256 is None and e.hash_prefix is None
    assert get_weights("i3d_nonlocal_32x4_I3D_pretrain_400k").backbone_norm == "affine"


def test_paper_numbers_are_the_registrys():
    """The README's "in paper" column for the 32x2 models is the paper's table (the registry's)."""
    for name in list_weights(kind="kinetics"):
        e = get_weights(name)
        if "_32x2_" in name:
            assert e.paper_metrics["top1"] == model_info(e.model).paper["top1"], name
        elif "_128x1_" not in name:
            assert e.paper_metrics == {}, name


def test_torchvision_entries_names_and_aliases():
    e = get_weights("ResNet50_Weights.IMAGENET1K_V1")
    assert (
        e.name == "resnet50_imagenet1k_v1"
        and e.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    )
    assert e.hash_prefix == "0676ba61" and e.kind == "imagenet" and e.metrics["acc@1"] == 76.13
    assert get_weights("resnet50-0676ba61.pth") is e and get_weights("RESNET50_IMAGENET1K_V1") is e
    assert get_weights("resnet101_imagenet1k_v1").hash_prefix == "63fe2227"
    mask = get_weights("MaskRCNN_ResNet50_FPN_Weights.COCO_V1")
    assert mask.hash_prefix == "bf2d0c1e" and mask.model == "maskrcnn_r50_fpn" and mask.kind == "detector"
    assert get_weights("keypointrcnn_resnet50_fpn_coco_v1").hash_prefix == "fc266e95"
    assert list_weights(model="i3d_nl5_r50_8x8") == [
        "i3d_nonlocal_8x8_IN_pretrain_400k",
        "i3d_nonlocal_32x4_I3D_pretrain_400k",
    ]


def test_unknown_names_suggest_the_close_ones():
    with pytest.raises(ValueError, match="Did you mean i3d_nonlocal_32x2_IN_pretrain_400k"):
        get_weights("i3d_nonlocal_32x2")
    with pytest.raises(ValueError, match="unknown kind"):
        list_weights(kind="audio")


# downloads and conversions through the catalogue (tiny files)


def test_a_pth_is_checked_by_its_name_prefix_through_a_mirror(server, tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    data = buf.getvalue()
    import hashlib

    name = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[f"/{name}"] = data
    entry = _tiny(f"https://download.pytorch.org/models/{name}")  # fetched from the mirror by name
    path = weights_file(entry, cache_dir=tmp_path, mirror=server.base, progress=False)
    assert path == tmp_path / name and path.read_bytes() == data
    assert weights_file(entry, cache_dir=tmp_path, mirror=server.base, progress=False) == path
    assert server.gets[f"/{name}"] == 1  # the second call used the cache
    path.write_bytes(data[:-1] + b"x")  # damaged in the cache (or a wrong file put by hand)
    with pytest.raises(ChecksumError, match=f"{name}: SHA-256 .*delete it to download it again"):
        weights_file(entry, cache_dir=tmp_path, mirror=server.base, progress=False)


def _tiny_c2d():
    stages = [
        StageSpec(depth=1, width=4, stride=1, temporal_a=(1,), temporal_b=(1,)),
        StageSpec(depth=1, width=8, stride=2, temporal_a=(1,), temporal_b=(1,), nonlocal_after=(0,)),
    ]
    return build_model("c2d_r50", num_classes=2, stem_width=8, stages=stages, pool2_temporal=0)


def test_imagenet_weights_by_name_are_inflated(server, tmp_path):
    """A 2D state dict (a tiny ResNet's, as torchvision's .pth) loads by name, inflated."""
    import hashlib

    source = _tiny_c2d()
    state_2d = {k: v.squeeze(2) if v.dim() == 5 else v for k, v in source.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state_2d, buf)
    name = f"tiny-{hashlib.sha256(buf.getvalue()).hexdigest()[:8]}.pth"
    server.files[f"/{name}"] = buf.getvalue()
    model = _tiny_c2d()
    report = load_named_weights(model, _tiny(server.url(name)), cache_dir=tmp_path, progress=False)
    assert report.startswith("tiny inflated from") and "copied" in report
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer2[0].conv2.weight, source.layer2[0].conv2.weight)


def test_an_archive_member_is_converted_once_to_safetensors(server, tmp_path):
    server.files["/pretrained_model.tar.gz"] = _archive("pretrained_model/r9.pkl", BLOBS_2D)
    entry = _tiny(server.url("pretrained_model.tar.gz"), member="r9.pkl")
    path = weights_file(entry, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "tiny.safetensors" == cache_paths(entry, cache_dir=tmp_path)[1]
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == ["conv1_w", "res_conv1_bn_s"]  # solver blobs left out
        assert torch.equal(f.get_tensor("conv1_w"), torch.from_numpy(BLOBS_2D["conv1_w"]))
        assert f.metadata()["source_file"] == "r9.pkl"
    (tmp_path / "pretrained_model.tar.gz").unlink()
    assert weights_file(entry, cache_dir=tmp_path, progress=False) == path
    assert server.gets["/pretrained_model.tar.gz"] == 1


def test_a_missing_archive_member_is_named(server, tmp_path):
    server.files["/pretrained_model.tar.gz"] = _archive("pretrained_model/r9.pkl", BLOBS_2D)
    entry = _tiny(server.url("pretrained_model.tar.gz"), member="r101.pkl")
    with pytest.raises(
        ValueError, match=r"no file 'r101.pkl' in the archive \(it holds: pretrained_model/r9.pkl"
    ):
        weights_file(entry, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "tiny.safetensors").exists()


def test_a_file_put_by_hand_is_used_without_a_download(server, tmp_path):
    entry = _tiny(server.url("pretrained_model.tar.gz"), member="r9.pkl")
    raw, usable = cache_paths(entry, cache_dir=tmp_path)
    raw.write_bytes(_archive("r9.pkl", BLOBS_2D))
    assert weights_file(entry, cache_dir=tmp_path, progress=False) == usable
    assert server.gets == {}


def _convert_in_child(entry, cache, barrier, results):
    barrier.wait()
    results.put(os.fspath(weights_file(entry, cache_dir=cache, progress=False)))


def test_two_processes_at_once_download_and_convert_once(server, tmp_path):
    server.files["/pretrained_model.tar.gz"] = _archive("r9.pkl", BLOBS_2D)
    server.delay = 0.3
    entry = _tiny(server.url("pretrained_model.tar.gz"), member="r9.pkl")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_convert_in_child, args=(entry, tmp_path, barrier, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert {results.get(timeout=5) for _ in procs} == {os.fspath(tmp_path / "tiny.safetensors")}
    assert server.gets["/pretrained_model.tar.gz"] == 1


def test_offline_names_the_url_and_where_to_put_the_file(tmp_path):
    mirror = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DownloadError) as err:
        weights_file("i3d_nonlocal_32x2_IN_pretrain_400k", cache_dir=tmp_path, mirror=mirror, progress=False)
    message = str(err.value)
    assert f"cannot download {mirror}/i3d_nonlocal_32x2_IN_pretrain_400k.pkl" in message
    assert f"put it at {tmp_path / 'i3d_nonlocal_32x2_IN_pretrain_400k.pkl'}" in message
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


# loading by name


def test_the_wrong_network_is_refused_before_any_download(server, tmp_path):
    with torch.device("meta"):
        paper = build_model("i3d_nl5_r50")  # the paper variant: same shapes, other outputs
    with pytest.raises(ReleasedModelMismatchError, match="variant: paper.*variant='released'"):
        load_named_weights(
            paper, "i3d_nonlocal_32x2_IN_pretrain_400k", cache_dir=tmp_path, mirror=server.base
        )
    with pytest.raises(ReleasedModelMismatchError) as err:
        build_model("c2d_r50", weights=RELEASED, variant="paper", num_classes=10)
    message = str(err.value)
    assert "variant='paper', but c2d_baseline_8x8_IN_pretrain_400k has variant 'released'" in message
    assert "num_classes=10, but c2d_baseline_8x8_IN_pretrain_400k has num_classes 400" in message
    assert "build_model('c2d_r50_8x8', weights='c2d_baseline_8x8_IN_pretrain_400k') builds that" in message
    assert (
        "build_model('c2d_r50'), but c2d_baseline_8x8_IN_pretrain_400k are the weights of c2d_r50_8x8"
        in message
    )
    assert server.gets == {}
    with pytest.raises(ValueError, match="detection.weights: maskrcnn_resnet50_fpn_coco_v1"):
        build_model("c2d_r50", weights="maskrcnn_resnet50_fpn_coco_v1")


@pytest.mark.slow
def test_build_model_by_weights_name_uses_the_cache(released_cache, monkeypatch, capsys):
    cache, state = released_cache
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")  # any download would fail
    model = build_model("c2d_r50_8x8", weights=RELEASED)
    assert model.spec == model_spec("c2d_r50_8x8", variant="released") and model.fc.out_features == 400
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key
    assert main(["weights", "--download", RELEASED, "--no-progress"]) == 0
    assert capsys.readouterr().out == f"{RELEASED}: {cache / RELEASED}.safetensors\n"
    weights = read_model_file(RELEASED)  # eval/predict --checkpoint NAME read the converted file
    assert weights.kind == "safetensors" and weights.released == RELEASED_CHECKPOINTS[RELEASED + ".pkl"]


@pytest.mark.slow
def test_a_baseline_into_its_nonlocal_network_and_fine_tuning(released_cache):
    cache, state = released_cache
    model = build_model("c2d_nl5_r50_8x8", num_classes=10, variant="released")
    identity = {k: v.clone() for k, v in model.state_dict().items() if f".{NONLOCAL_ATTR}." in k}
    assert len(identity) == 5 * 13  # theta, phi, g, out: weight and bias; BN: 4 tensors and a count
    report = load_named_weights(model, RELEASED, cache_dir=cache)
    assert f"{len(identity)} non-local block tensors kept at their identity initialisation" in report
    assert "classifier re-initialised (400 -> 10 classes)" in report and "clips of 8 frames every 8" in report
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in identity.items())
    assert torch.equal(own["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    assert not torch.equal(own["fc.weight"][:10], state["fc.weight"][:10])


@pytest.mark.slow
def test_model_init_by_name(released_cache, monkeypatch):
    cache, state = released_cache
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    cfg = config_from_dict({"model": {"name": "c2d_r50_8x8", "variant": "released", "init": RELEASED}})
    model = build_model_from_config(cfg.model)
    assert RELEASED in initialise_model(model, cfg.model)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    cfg.model.variant = "paper"
    with pytest.raises(ReleasedModelMismatchError, match="model.variant: paper.*set model.variant=released"):
        initialise_model(build_model_from_config(cfg.model), cfg.model)


def test_model_init_names_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="model.init_path .* must stay unset"):
        config_from_dict({"model": {"init": RELEASED, "init_path": "x.pkl"}})
    with pytest.raises(ConfigError, match="neither one of .*Did you mean i3d_baseline_8x8_IN_pretrain_400k"):
        config_from_dict({"model": {"init": "i3d_baseline_8x8"}})
    with pytest.raises(ConfigError, match="model.init is 'caffe2' but model.init_path is not set"):
        config_from_dict({"model": {"init": "caffe2"}})


def test_cli_lists_shows_and_downloads(server, tmp_path, monkeypatch, capsys):
    assert main(["weights"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in list_weights())
    assert main(["weights", "i3d_nonlocal_32x4_I3D_pretrain_400k", "--cache-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "32 frames every 4" in shown and "released / affine" in shown and "CC-BY-NC-4.0" in shown
    assert str(tmp_path / "i3d_nonlocal_32x4_I3D_pretrain_400k.safetensors") in shown
    monkeypatch.setenv(MIRROR_ENV, server.base)
    assert (
        main(["weights", "--download", "c2d_baseline_32x2_IN_pretrain_400k", "--cache-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert "HTTP 404" in err and f"put it at {tmp_path / 'c2d_baseline_32x2_IN_pretrain_400k.pkl'}" in err
