"""Tasks the one training loop trains (:class:`nonlocalnet.engine.task.Task`).

Tasks build on the engine: a task imports the engine's config, AMP and distributed helpers and
``data``/``models``; the engine knows a task only by the name a config gives
(``task: video_classification``, :data:`nonlocalnet.engine.task.TASKS`).
"""

from nonlocalnet.tasks.video import VideoClassification

__all__ = ["VideoClassification"]
