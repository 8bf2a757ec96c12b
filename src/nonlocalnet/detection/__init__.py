"""Detection, instance segmentation and keypoints with non-local blocks (the paper's COCO half):
torchvision's Mask R-CNN / Keypoint R-CNN with the blocks placed as the paper does (registered in
:mod:`nonlocalnet.models.registry` on import: ``list_models("detector")``), COCO-format data and
pycocotools' COCOeval. Needs the ``detection`` extra (torchvision, pycocotools); the
rest of ``nonlocalnet`` never imports this package."""

try:
    import pycocotools  # noqa: F401
    import torchvision  # noqa: F401
except ImportError as _err:
    from nonlocalnet.errors import MissingDependencyError

    raise MissingDependencyError(
        f"nonlocalnet.detection needs torchvision and pycocotools ({_err}); "
        "pip install 'nonlocalnet[detection]'"
    ) from None

from nonlocalnet.detection.batch import DetectionBatch, DetectionSample, collate_detection
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.cocoeval import coco_evaluate, to_coco_results, write_coco_results
from nonlocalnet.detection.evaluate import DetectionEvaluation, evaluate_detector
from nonlocalnet.detection.labels import LabelSpace, resolve_label_space
from nonlocalnet.detection.models import (
    DETECTOR_BLOCK,
    WeightsReport,
    build_detector,
    load_detector_weights,
    nonlocal_blocks,
)
from nonlocalnet.detection.predict import PredictionReport, predict_images, predict_path
from nonlocalnet.detection.sampler import GroupedBatchSampler, build_detection_loader
from nonlocalnet.detection.trained import TrainedDetector, predict_image, read_image

__all__ = [
    "DETECTOR_BLOCK",
    "CocoDetection",
    "DetectionBatch",
    "DetectionEvaluation",
    "DetectionSample",
    "GroupedBatchSampler",
    "LabelSpace",
    "PredictionReport",
    "TrainedDetector",
    "WeightsReport",
    "build_detection_loader",
    "build_detector",
    "coco_evaluate",
    "collate_detection",
    "evaluate_detector",
    "load_detector_weights",
    "nonlocal_blocks",
    "predict_image",
    "predict_images",
    "predict_path",
    "read_image",
    "resolve_label_space",
    "to_coco_results",
    "write_coco_results",
]
