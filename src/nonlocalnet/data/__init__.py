"""Video data: decoding (PyAV), lists, clip sampling, transforms, the clip dataset, batches, bad-data
bookkeeping, the deterministic loader and data checks."""

from nonlocalnet.data.bad_data import BadDataLog, BadSample, DataQualityError
from nonlocalnet.data.batch import ClipBatch, collate_clips
from nonlocalnet.data.check import CheckReport, VideoNote, check_dataset
from nonlocalnet.data.dataset import VideoClipDataset
from nonlocalnet.data.decode import (
    FrameIndex,
    VideoDecodeError,
    VideoInfo,
    VideoReader,
    probe_video,
    read_all_frames,
    read_frames,
)
from nonlocalnet.data.frame_cache import FrameCache
from nonlocalnet.data.frame_folder import FrameFolderReader
from nonlocalnet.data.lists import (
    VIDEO_EXTENSIONS,
    MissingVideo,
    SkippedFile,
    VideoList,
    VideoSample,
    read_class_names,
    read_video_list,
    scan_class_folders,
)
from nonlocalnet.data.loader import EpochSampler, build_loader
from nonlocalnet.data.sampling import ClipSampling, test_clip_indices, train_clip_indices
from nonlocalnet.data.transforms import (
    TransformConfig,
    center_crop,
    normalize,
    random_crop,
    random_horizontal_flip,
    random_short_side_scale,
    resize_short_side,
    spatial_crops,
    test_views,
    to_float_cthw,
    train_transform,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "BadDataLog",
    "BadSample",
    "CheckReport",
    "ClipBatch",
    "ClipSampling",
    "DataQualityError",
    "EpochSampler",
    "FrameCache",
    "FrameFolderReader",
    "FrameIndex",
    "MissingVideo",
    "SkippedFile",
    "TransformConfig",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoInfo",
    "VideoList",
    "VideoNote",
    "VideoReader",
    "VideoSample",
    "build_loader",
    "center_crop",
    "check_dataset",
    "collate_clips",
    "normalize",
    "probe_video",
    "random_crop",
    "random_horizontal_flip",
    "random_short_side_scale",
    "read_all_frames",
    "read_class_names",
    "read_frames",
    "read_video_list",
    "resize_short_side",
    "scan_class_folders",
    "spatial_crops",
    "test_clip_indices",
    "test_views",
    "to_float_cthw",
    "train_clip_indices",
    "train_transform",
]
