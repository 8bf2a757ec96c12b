"""The task-free engine: config machinery, the training loop, checkpoints, distributed and AMP
helpers (the tasks, ``nonlocalnet.tasks``, supply models, data and metrics)."""

from nonlocalnet.engine.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from nonlocalnet.engine.config import (
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from nonlocalnet.engine.distributed import DistContext, DistributedError, init_distributed
from nonlocalnet.engine.metrics import topk_correct
from nonlocalnet.engine.model_file import ModelFile, load_model_file, read_model_file
from nonlocalnet.engine.optim import build_optimizer, lr_at, milestone_steps, scaled_lr, set_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.runlog import RunLog, read_jsonl
from nonlocalnet.engine.task import TASKS, Evaluation, StepLoss, Task, build_task, register_task
from nonlocalnet.engine.train import TrainResult, train

__all__ = [
    "TASKS",
    "CheckpointConfig",
    "CheckpointManager",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistContext",
    "DistributedError",
    "EvalConfig",
    "Evaluation",
    "ModelFile",
    "OptimConfig",
    "RunLog",
    "StepLoss",
    "Task",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_optimizer",
    "build_task",
    "config_from_dict",
    "config_to_dict",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "load_model_file",
    "lr_at",
    "milestone_steps",
    "read_jsonl",
    "read_model_file",
    "register_task",
    "save_checkpoint",
    "save_config",
    "scaled_lr",
    "set_lr",
    "topk_correct",
    "train",
    "update_bn_stats",
]
