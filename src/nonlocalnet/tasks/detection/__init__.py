"""Detection (the paper's COCO half) as a task: its config, the task the engine trains, the
model from a config or a checkpoint (:mod:`~nonlocalnet.tasks.detection.setup`) and
``nonlocalnet detect-eval`` (:mod:`~nonlocalnet.tasks.detection.evaluate`). This package imports
without the ``detection`` extra; those two modules and building the task need it."""

from nonlocalnet.tasks.detection.config import DetectionConfig, DetectionTaskConfig
from nonlocalnet.tasks.detection.task import Detection

__all__ = ["Detection", "DetectionConfig", "DetectionTaskConfig"]
