"""Training options through the library API: accumulation, bf16, layouts, precise BN, inits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_video import tiny_config

from nonlocalnet.engine import train, update_bn_stats
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.tasks import config_from_dict


def _run(tiny_data, out, **sections):
    sections.setdefault("eval", {"every_epochs": 0})
    cfg = config_from_dict(tiny_config(tiny_data, out, **sections))
    return train(cfg), load_file(out / "model.safetensors")


def test_gradient_accumulation_equals_the_big_batch(tmp_path, tiny_data):
    common = {"model": {"backbone_norm": "affine"}}
    _, big = _run(tiny_data, tmp_path / "big", train={"epochs": 2, "batch_size": 4}, **common)
    _, acc = _run(
        tiny_data, tmp_path / "acc", train={"epochs": 2, "batch_size": 2, "grad_accum": 2}, **common
    )
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    "options", [{"amp": "bf16"}, {"memory_format": "channels_last"}, {"memory_format": "auto"}]
)
def test_bf16_and_memory_formats_train(tmp_path, tiny_data, options):
    result, weights = _run(tiny_data, tmp_path / "r", train={"epochs": 1, **options})
    assert result.steps == 2 and all(torch.isfinite(w).all() for w in weights.values())


def test_fp16_on_cpu_is_a_clear_error(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="fp16 autocast needs a CUDA device; use bf16 on CPU"):
        _run(tiny_data, tmp_path / "r", train={"epochs": 1, "amp": "fp16"})


def test_precise_bn_runs_and_equals_the_mean_of_batch_statistics(tmp_path, tiny_data):
    result, _ = _run(tiny_data, tmp_path / "r", train={"epochs": 1, "precise_bn_batches": 2})
    assert result.steps == 2

    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    batches = [torch.randn(2, 3, 2, 4, 4) * (i + 1) + i for i in range(3)]

    used = update_bn_stats(model, batches, 3, model_input=lambda batch: batch)
    assert used == 3
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(4, -1).var(dim=1) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.1  # restored


def test_init_from_weights_and_from_a_checkpoint(tmp_path, tiny_data):
    first, weights = _run(tiny_data, tmp_path / "a", train={"epochs": 1})
    for init, path in (
        ("weights", first.output_dir / "model.safetensors"),
        ("checkpoint", first.output_dir / "checkpoints" / "iter_00000002.pt"),
    ):
        cfg = config_from_dict(
            tiny_config(
                tiny_data,
                tmp_path / init,
                model={"init": init, "init_path": str(path)},
                train={"iterations": 1, "epochs": 0},
                optim={"base_lr": 0.0},
            )
        )
        train(cfg)
        again = load_file(tmp_path / init / "model.safetensors")
        for key in weights:
            if "running" not in key and "num_batches" not in key:
                torch.testing.assert_close(again[key], weights[key], msg=key)
    with pytest.raises(ConfigError, match="model.init_path: file not found"):
        cfg = config_from_dict(
            tiny_config(
                tiny_data, tmp_path / "x", model={"init": "weights", "init_path": str(tmp_path / "no")}
            )
        )
        train(cfg)


def test_results_do_not_depend_on_the_number_of_loader_workers(tmp_path, tiny_data):
    _, zero = _run(tiny_data, tmp_path / "w0", train={"epochs": 2})
    _, two = _run(tiny_data, tmp_path / "w2", train={"epochs": 2}, data={"num_workers": 2})
    for key in zero:
        assert torch.equal(zero[key], two[key]), key


def test_init_from_2d_imagenet_weights_and_from_released_caffe2_blobs(tmp_path, tiny_data):
    from nonlocalnet.models import export_caffe2_blobs, save_caffe2_pickle
    from nonlocalnet.tasks.video import build_model_from_config

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "src"))
    torch.manual_seed(5)
    source = build_model_from_config(cfg.model)
    for p in source.parameters():
        p.data.normal_()
    state_2d = {
        k: v[:, :, 0] if v.dim() == 5 else v for k, v in source.state_dict().items() if ".nl." not in k
    }
    torch.save(state_2d, tmp_path / "resnet2d.pth")
    save_caffe2_pickle(export_caffe2_blobs(source), tmp_path / "released.pkl")
    for init, path in (("imagenet", "resnet2d.pth"), ("caffe2", "released.pkl")):
        sections = {
            "model": {"init": init, "init_path": str(tmp_path / path)},
            "train": {"iterations": 1, "epochs": 0},
        }
        run = config_from_dict(tiny_config(tiny_data, tmp_path / init, optim={"base_lr": 0.0}, **sections))
        train(run)
        loaded = load_file(tmp_path / init / "model.safetensors")
        for key, value in source.state_dict().items():
            if ".nl." in key and init == "imagenet":
                continue  # 2D ImageNet weights have no non-local blocks: those stay at init
            if "running" in key or "num_batches" in key:
                continue  # one training step updates the BN statistics
            torch.testing.assert_close(loaded[key], value, msg=f"{init}: {key}")


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="train.sync_bn needs CUDA"):
        _run(tiny_data, tmp_path / "r", train={"epochs": 1, "sync_bn": True})


def test_cached_frames_train_exactly_like_decoding_each_time(tmp_path, tiny_data):
    _, plain = _run(tiny_data, tmp_path / "plain", train={"epochs": 2})
    _, cached = _run(tiny_data, tmp_path / "cached", train={"epochs": 2}, data={"cache_frames": True})
    for key in plain:
        assert torch.equal(plain[key], cached[key]), key


@pytest.mark.parametrize("mult", [0.0, 1.0])
def test_nonlocal_lr_mult_reaches_the_blocks(tmp_path, tiny_data, mult):
    # the block's BN scale starts at 0 (identity); at lr x 0 it stays there, at lr x 1 it moves,
    # while the rest of the network trains either way
    _, weights = _run(tiny_data, tmp_path / "r", train={"epochs": 1}, optim={"nonlocal_lr_mult": mult})
    (scale,) = [k for k in weights if "nl" in k.split(".") and k.endswith(".norm.weight")]
    assert torch.count_nonzero(weights[scale]).item() == (0 if mult == 0 else weights[scale].numel())
