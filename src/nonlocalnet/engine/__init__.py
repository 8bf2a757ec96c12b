"""Training, evaluation and inference: the paper's recipe as a library (the CLI is a thin layer)."""

from nonlocalnet.engine.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from nonlocalnet.engine.config import (
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from nonlocalnet.engine.distributed import DistContext, DistributedError, init_distributed
from nonlocalnet.engine.evaluate import EvalReport, run_evaluation, write_video_scores
from nonlocalnet.engine.hooks import HookBase, MetricsWindow, ProgressBar
from nonlocalnet.engine.layout import choose_memory_format
from nonlocalnet.engine.metrics import EvalResult, ViewScores, topk_correct
from nonlocalnet.engine.model_file import ModelFile, load_model_file, read_model_file
from nonlocalnet.engine.optim import build_optimizer, lr_at, milestone_steps, scaled_lr, set_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.predict import Prediction, inference_config, load_trained_model, predict_video
from nonlocalnet.engine.resume import StepSplit
from nonlocalnet.engine.runlog import RunLog, read_jsonl
from nonlocalnet.engine.setup import build_dataset, build_model_from_config, initialise_model, load_samples
from nonlocalnet.engine.state import RunState
from nonlocalnet.engine.task import TASKS, Evaluation, StepLoss, Task, TaskEntry, build_task, register_task
from nonlocalnet.engine.trainer import Trainer, TrainResult, train

# isort: split
# last: the package attributes ``evaluate`` and ``predict`` are these functions, not the modules
# engine/evaluate.py and engine/predict.py (import those by their full path)
from nonlocalnet.engine.inference import evaluate, predict

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
    "EvalReport",
    "EvalResult",
    "Evaluation",
    "HookBase",
    "MetricsWindow",
    "ModelConfig",
    "ModelFile",
    "OptimConfig",
    "Prediction",
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
    "ViewScores",
    "apply_overrides",
    "build_dataset",
    "build_model_from_config",
    "build_optimizer",
    "build_task",
    "choose_memory_format",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "inference_config",
    "init_distributed",
    "initialise_model",
    "load_checkpoint",
    "load_config",
    "load_model_file",
    "load_samples",
    "load_trained_model",
    "lr_at",
    "milestone_steps",
    "predict",
    "predict_video",
    "read_jsonl",
    "read_model_file",
    "register_task",
    "run_evaluation",
    "save_checkpoint",
    "save_config",
    "scaled_lr",
    "set_lr",
    "topk_correct",
    "train",
    "update_bn_stats",
    "write_video_scores",
]
