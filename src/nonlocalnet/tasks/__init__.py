"""The tasks the one training loop trains (:class:`nonlocalnet.engine.task.Task`): video
classification (:mod:`nonlocalnet.tasks.video`) and detection (:mod:`nonlocalnet.tasks.detection`),
registered when this package is imported.

Tasks build on the engine: a task imports the engine's config, AMP and distributed helpers and
``data``/``models``; the engine knows a task only by the name a config gives
(``task: video_classification``, :data:`nonlocalnet.engine.task.TASKS`), so :func:`load_config`
and :func:`config_from_dict` (the engine's) build each task's config class. Detection imports
torchvision (the ``detection`` extra) only when a detection task is built.
"""

from nonlocalnet.engine.task import config_from_dict, load_config, register_task
from nonlocalnet.tasks.detection import Detection, DetectionConfig, DetectionTaskConfig
from nonlocalnet.tasks.video import VideoClassification, VideoConfig

register_task("video_classification", VideoClassification, VideoConfig)
register_task("detection", Detection, DetectionTaskConfig)

__all__ = [
    "Detection",
    "DetectionConfig",
    "DetectionTaskConfig",
    "VideoClassification",
    "VideoConfig",
    "config_from_dict",
    "load_config",
]
