"""Tasks the one training loop trains (:class:`nonlocalnet.engine.task.Task`), registered
when this package is imported.

Tasks build on the engine: a task imports the engine's config, AMP and distributed helpers and
``data``/``models``; the engine knows a task only by the name a config gives
(``task: video_classification``, :data:`nonlocalnet.engine.task.TASKS`). ``detection`` is
registered when its extra (torchvision, pycocotools) is installed.
"""

from nonlocalnet.engine.config import Config
from nonlocalnet.engine.task import register_task
from nonlocalnet.tasks.video import VideoClassification

__all__ = ["VideoClassification"]

register_task("video_classification", VideoClassification, Config)

try:
    from nonlocalnet.tasks.detection import Detection
except ModuleNotFoundError as err:  # without the detection extra
    if (err.name or "").partition(".")[0] not in ("torchvision", "pycocotools"):
        raise
else:
    register_task("detection", Detection, Config)
