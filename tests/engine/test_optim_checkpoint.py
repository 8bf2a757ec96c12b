import random

import numpy as np
import pytest
import torch
from torch import nn

from nonlocalnet.engine import (
    CheckpointManager,
    build_optimizer,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    scaled_lr,
    set_lr,
)
from nonlocalnet.engine.checkpoint import capture_rng_state, restore_rng_state
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.tasks import config_from_dict


def test_lr_schedule_is_the_papers_step_schedule():
    cfg = config_from_dict({}).optim
    peak = scaled_lr(cfg, 64)
    assert peak == pytest.approx(0.01)
    assert scaled_lr(cfg, 16) == pytest.approx(0.0025)  # linear scaling
    assert lr_at(0, 400_000, peak, cfg) == pytest.approx(0.01)
    assert lr_at(149_999, 400_000, peak, cfg) == pytest.approx(0.01)
    assert lr_at(150_000, 400_000, peak, cfg) == pytest.approx(0.001)
    assert lr_at(300_000, 400_000, peak, cfg) == pytest.approx(0.0001)


def test_warmup_ramps_linearly():
    cfg = config_from_dict({"optim": {"warmup_iters": 10, "warmup_factor": 0.1}}).optim
    lrs = [lr_at(s, 100, 1.0, cfg) for s in range(12)]
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10:] == [1.0, 1.0]


def test_no_weight_decay_on_normalisation_parameters():
    model = nn.Sequential(nn.Conv3d(3, 8, 1), nn.BatchNorm3d(8), NonLocalBlock(8, inter_channels=4))
    opt = build_optimizer(model, config_from_dict({}).optim, lr=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm3d) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == norm_ids  # both BNs (backbone and block)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_nonlocal_lr_mult_puts_the_blocks_in_groups_of_their_own():
    block = NonLocalBlock(8, inter_channels=4)
    model = nn.Sequential(nn.Conv3d(3, 8, 1), nn.BatchNorm3d(8), block)
    cfg = config_from_dict({"optim": {"nonlocal_lr_mult": 10}}).optim
    opt = build_optimizer(model, cfg, lr=0.1)
    assert [(g["lr_mult"], g["weight_decay"]) for g in opt.param_groups] == [
        (1.0, 1e-4),
        (1.0, 0.0),
        (10.0, 1e-4),
        (10.0, 0.0),
    ]
    block_ids = {id(p) for p in block.parameters()}
    assert {id(p) for g in opt.param_groups[2:] for p in g["params"]} == block_ids
    assert {id(p) for p in opt.param_groups[3]["params"]} == {id(p) for p in block.norm.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 1.0, 1.0])
    set_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.02, 0.2, 0.2])
    # the default keeps the two groups older checkpoints were written with
    assert len(build_optimizer(model, config_from_dict({}).optim, lr=0.1).param_groups) == 2


def test_nonlocal_lr_mult_must_not_be_negative():
    with pytest.raises(ConfigError, match="nonlocal_lr_mult"):
        config_from_dict({"optim": {"nonlocal_lr_mult": -1}})


def test_checkpoint_manager_keeps_last_k_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        manager.save({"model": {"w": torch.tensor([float(step)])}, "step": step}, step)
    assert [p.name for p in manager.checkpoints()] == ["iter_00000010.pt", "iter_00000015.pt"]
    assert load_checkpoint(manager.latest())["step"] == 15
    manager.save_best({"model": {}, "step": 10})
    assert load_checkpoint(manager.best_path)["step"] == 10
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_write_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {}, "step": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"model": {}, "step": 2, "x": Boom()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_rejects_non_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable nonlocalnet checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    state = capture_rng_state()
    save_checkpoint(tmp_path / "r.pt", {"model": {}, "rng": state})
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
