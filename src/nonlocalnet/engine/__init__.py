"""The task-free engine: config machinery, the trainer and its hooks, the generic evaluate and
predict entry points, checkpoints, distributed and AMP helpers (the tasks, ``nonlocalnet.tasks``,
supply models, data, losses and metrics)."""

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
    build_config,
    config_to_dict,
    read_config_data,
    save_config,
)
from nonlocalnet.engine.distributed import DistContext, DistributedError, init_distributed
from nonlocalnet.engine.hooks import HookBase, MetricsWindow, ProgressBar
from nonlocalnet.engine.inference import evaluate, predict
from nonlocalnet.engine.metrics import topk_correct
from nonlocalnet.engine.optim import build_optimizer, lr_at, milestone_steps, scaled_lr, set_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.resume import StepSplit
from nonlocalnet.engine.runlog import RunLog, read_jsonl
from nonlocalnet.engine.state import RunState
from nonlocalnet.engine.task import (
    TASKS,
    Evaluation,
    StepLoss,
    Task,
    TaskEntry,
    build_task,
    config_from_dict,
    load_config,
    register_task,
)
from nonlocalnet.engine.trainer import Trainer, TrainResult, train

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
    "HookBase",
    "MetricsWindow",
    "OptimConfig",
    "ProgressBar",
    "RunLog",
    "RunState",
    "StepLoss",
    "StepSplit",
    "Task",
    "TaskEntry",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "build_config",
    "build_optimizer",
    "build_task",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "milestone_steps",
    "predict",
    "read_config_data",
    "read_jsonl",
    "register_task",
    "save_checkpoint",
    "save_config",
    "scaled_lr",
    "set_lr",
    "topk_correct",
    "train",
    "update_bn_stats",
]
