"""Video classification (the paper's Kinetics task): its config, the task the engine trains,
evaluation (``nonlocalnet eval``) and prediction (``nonlocalnet predict``)."""

from nonlocalnet.tasks.video.config import (
    CONFIG_KEYS,
    INIT_KINDS,
    ModelConfig,
    VideoConfig,
    VideoDataConfig,
    VideoEvalConfig,
    video_resnet_spec,
)
from nonlocalnet.tasks.video.evaluate import (
    SCORE_FORMATS,
    EvalReport,
    config_weights,
    run_evaluation,
    score_samples,
    score_views,
    write_video_scores,
)
from nonlocalnet.tasks.video.memory_format import choose_memory_format
from nonlocalnet.tasks.video.metrics import EvalResult, ViewScores
from nonlocalnet.tasks.video.predict import (
    Prediction,
    inference_config,
    load_model_weights,
    load_trained_model,
    predict_video,
)
from nonlocalnet.tasks.video.setup import (
    build_dataset,
    build_model_from_config,
    initialise_model,
    load_samples,
)
from nonlocalnet.tasks.video.task import VideoClassification

__all__ = [
    "CONFIG_KEYS",
    "INIT_KINDS",
    "SCORE_FORMATS",
    "EvalReport",
    "EvalResult",
    "ModelConfig",
    "Prediction",
    "VideoClassification",
    "VideoConfig",
    "VideoDataConfig",
    "VideoEvalConfig",
    "ViewScores",
    "build_dataset",
    "build_model_from_config",
    "choose_memory_format",
    "config_weights",
    "inference_config",
    "initialise_model",
    "load_model_weights",
    "load_samples",
    "load_trained_model",
    "predict_video",
    "run_evaluation",
    "score_samples",
    "score_views",
    "video_resnet_spec",
    "write_video_scores",
]
