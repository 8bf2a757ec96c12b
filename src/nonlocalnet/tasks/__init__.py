"""The tasks the one training loop trains (:class:`nonlocalnet.engine.task.Task`): video
classification (:mod:`nonlocalnet.tasks.video`) and detection (:mod:`nonlocalnet.tasks.detection`).

Tasks build on the engine: a task imports the engine's config, AMP and distributed helpers and
``data``/``models``; the engine knows a task only by the name a config gives
(``task: video_classification``). Importing this package registers both tasks' config classes,
so that :func:`load_config` and :func:`config_from_dict` (the engine's) build them.
"""

from nonlocalnet.engine.config import config_from_dict, load_config, register_config
from nonlocalnet.tasks.detection import Detection, DetectionConfig, DetectionTaskConfig
from nonlocalnet.tasks.video import VideoClassification, VideoConfig

register_config("video_classification", VideoConfig)
register_config("detection", DetectionTaskConfig)

__all__ = [
    "Detection",
    "DetectionConfig",
    "DetectionTaskConfig",
    "VideoClassification",
    "VideoConfig",
    "config_from_dict",
    "load_config",
]
