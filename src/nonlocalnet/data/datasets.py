"""Deprecated: the contents of this module now live in one file per concept (``lists``,
``sampling``, ``frame_cache``, ``dataset``, ``batch``, ``bad_data``, ``loader``); import them from
:mod:`nonlocalnet.data`. This alias goes away in the next release."""

import warnings

from nonlocalnet.data.bad_data import BadDataLog, BadSample, DataQualityError
from nonlocalnet.data.batch import ClipBatch, collate_clips
from nonlocalnet.data.dataset import VideoClipDataset
from nonlocalnet.data.frame_cache import FrameCache
from nonlocalnet.data.lists import (
    VIDEO_EXTENSIONS,
    VideoSample,
    class_folder_names,
    read_class_names,
    read_video_list,
    scan_class_folders,
)
from nonlocalnet.data.loader import EpochSampler, build_loader
from nonlocalnet.data.sampling import ClipSampling

__all__ = [
    "VIDEO_EXTENSIONS",
    "BadDataLog",
    "BadSample",
    "ClipBatch",
    "ClipSampling",
    "DataQualityError",
    "EpochSampler",
    "FrameCache",
    "VideoClipDataset",
    "VideoSample",
    "build_loader",
    "class_folder_names",
    "collate_clips",
    "read_class_names",
    "read_video_list",
    "scan_class_folders",
]

warnings.warn(
    "nonlocalnet.data.datasets is deprecated: import from nonlocalnet.data", DeprecationWarning, stacklevel=2
)
