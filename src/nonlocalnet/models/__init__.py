"""The paper's video models, insertion of blocks into any network, and weight import/export."""

from nonlocalnet.models.caffe2 import (
    Caffe2LoadReport,
    caffe2_norm,
    convert_caffe2_checkpoint,
    export_caffe2_blobs,
    load_caffe2_checkpoint,
    read_caffe2_pickle,
    save_caffe2_pickle,
)
from nonlocalnet.models.complexity import Complexity, measure_complexity
from nonlocalnet.models.factory import build_model
from nonlocalnet.models.inflate import InflationReport, inflate_2d_to_3d, inflate_kernel
from nonlocalnet.models.insert import add_nonlocal
from nonlocalnet.models.model_file import ModelFile, load_model_file, read_model_file
from nonlocalnet.models.pretrained import load_named_weights, resolve_weights, weights_file
from nonlocalnet.models.registry import KINDS, ModelInfo, list_models, model_info, register_model
from nonlocalnet.models.released import (
    RELEASE_URL,
    RELEASED_CHECKPOINTS,
    ReleasedCheckpoint,
    ReleasedModelMismatchError,
    check_bn_form,
    check_model_matches,
    released_checkpoint_info,
    released_info_from_metadata,
)
from nonlocalnet.models.resnet3d import Bottleneck3d, StageSpec, VideoResNet, VideoResNetSpec
from nonlocalnet.models.video_models import VARIANTS, build_video_model, model_spec
from nonlocalnet.models.weights import load_weights, read_weights_metadata, save_weights
from nonlocalnet.models.zoo import WeightsEntry, get_weights, list_weights

__all__ = [
    "KINDS",
    "RELEASED_CHECKPOINTS",
    "RELEASE_URL",
    "VARIANTS",
    "Bottleneck3d",
    "Caffe2LoadReport",
    "Complexity",
    "InflationReport",
    "ModelFile",
    "ModelInfo",
    "ReleasedCheckpoint",
    "ReleasedModelMismatchError",
    "StageSpec",
    "VideoResNet",
    "VideoResNetSpec",
    "WeightsEntry",
    "add_nonlocal",
    "build_model",
    "build_video_model",
    "caffe2_norm",
    "check_bn_form",
    "check_model_matches",
    "convert_caffe2_checkpoint",
    "export_caffe2_blobs",
    "get_weights",
    "inflate_2d_to_3d",
    "inflate_kernel",
    "list_models",
    "list_weights",
    "load_caffe2_checkpoint",
    "load_model_file",
    "load_named_weights",
    "load_weights",
    "measure_complexity",
    "model_info",
    "model_spec",
    "read_caffe2_pickle",
    "read_model_file",
    "read_weights_metadata",
    "register_model",
    "released_checkpoint_info",
    "released_info_from_metadata",
    "resolve_weights",
    "save_caffe2_pickle",
    "save_weights",
    "weights_file",
]
