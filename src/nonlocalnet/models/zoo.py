"""Named weights: every model the authors released, and the torchvision files the project uses.

One catalogue entry per published file: its URL, the registry model, variant, frame geometry and
BN form it belongs to (for the authors' Kinetics files: :func:`released_checkpoint_info`), the
accuracy its publisher reports, its licence and its SHA-256 where known (torchvision puts a digest
prefix in its file names; the authors published none). ``build_model(name, weights=...)``,
``model.init`` in a config and ``nonlocalnet weights`` take the entry names.

This module is the catalogue and the download of a published file into the cache
(:func:`download_weights`, through :mod:`nonlocalnet.models.download`: ``torch.hub``'s folder,
atomic, checked, one process at a time); it builds and loads no model. The usable file of an
entry (an authors' ``.pkl`` converted once to safetensors) is
:func:`~nonlocalnet.models.pretrained.weights_file`'s; building a model with named weights is
:func:`~nonlocalnet.models.factory.build_model`'s. ``$NONLOCALNET_WEIGHTS_MIRROR`` (or
``mirror=``) fetches every file by its name from another base URL (a local mirror; the tests'
127.0.0.1 server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nonlocalnet.atomic import atomic_write_bytes
from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.models.download import (
    ChecksumError,
    check_file,
    download_file,
    hash_prefix_of,
    resolve_cache_dir,
)
from nonlocalnet.models.registry import list_models
from nonlocalnet.models.released import (
    ReleasedCheckpoint,
    ReleasedModelMismatchError,
    check_model_matches,
    released_checkpoint_info,
)

__all__ = [
    "KINDS",
    "MIRROR_ENV",
    "WeightsEntry",
    "cache_paths",
    "check_kinetics_build",
    "check_weights_fit",
    "download_weights",
    "extract_member",
    "get_weights",
    "is_weights_name",
    "list_weights",
    "released_info",
    "video_weights",
]

MIRROR_ENV = "NONLOCALNET_WEIGHTS_MIRROR"
KINDS = ("kinetics", "imagenet", "detector")
"""``kinetics``: an authors' Caffe2 video model (loads into its registry model as it is);
``imagenet``: a 2D ImageNet ResNet (torchvision ``.pth`` or Caffe2 ``.pkl``; inflated into a video
model); ``detector``: a torchvision COCO detector (``detection.weights``)."""

_AUTHORS_BASE = "https://dl.fbaipublicfiles.com/video-nonlocal/"
_AUTHORS_README = "https://github.com/facebookresearch/video-nonlocal-net/blob/master/README.md"
# their README: "The code and the models in this repo are released under the CC-BY-NC 4.0 LICENSE"
_AUTHORS_LICENCE = "CC-BY-NC-4.0"
_TORCHVISION_BASE = "https://download.pytorch.org/models/"
# torchvision's README ("Pre-trained Model License"): the models "may have their own licenses or
# terms and conditions derived from the dataset used for training"
_TORCHVISION_LICENCE = "BSD-3-Clause (torchvision); terms of the training data may apply"
_TORCHVISION_DOCS = "https://pytorch.org/vision/stable/models.html"


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file and everything known about it (``None``: not published).

    ``metrics``: the publisher's numbers (Kinetics-400 val ``top1``/``top5`` in %, 10 clips x 3
    crops, fully convolutional, from the authors' README; torchvision's ``acc@1``/``box_map``/...);
    ``paper_metrics``: the paper's number for the same network, where it gives one. ``frames`` x
    ``sample_rate``: the clip the model was trained and tested on. ``member``: the file inside an
    archive ``url``. ``aliases``: other names accepted (torchvision's enum spelling, the file name).
    """

    name: str
    url: str
    kind: str
    dataset: str
    num_classes: int
    licence: str
    reference: str
    model: str | None = None
    variant: str | None = None
    backbone_norm: str | None = None
    frames: int | None = None
    sample_rate: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    paper_metrics: Mapping[str, float] = field(default_factory=dict)
    sha256: str | None = None
    member: str | None = None
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def file_name(self) -> str:
        """The published file's name (an archive's member: its base name)."""
        return Path(self.member).name if self.member else self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str | None:
        """The SHA-256 prefix in the published file name, torchvision's convention
        (``resnet50-0676ba61.pth``; ``torch.hub``'s ``check_hash``)."""
        return hash_prefix_of(self.url.rsplit("/", 1)[-1])

    @property
    def converted(self) -> bool:
        """A Caffe2 ``.pkl``: cached as safetensors after the download."""
        return self.file_name.endswith(".pkl")

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")

    @property
    def top5(self) -> float | None:
        return self.metrics.get("top5")


def _kinetics(stem: str, paper_top1: float | None = None, notes: str = "") -> WeightsEntry:
    """An authors' Kinetics-400 file: its URL, network and reported accuracy from the released-file
    table (:func:`~nonlocalnet.models.released_checkpoint_info`); ``paper_top1``: the paper's
    number for the same network (the README's "in paper" column)."""
    info = released_checkpoint_info(stem + ".pkl")
    if info is None or info.url is None or info.top1_top5 is None:
        raise AssertionError(f"{stem}.pkl is not in RELEASED_CHECKPOINTS with its URL and accuracy")
    top1, top5 = info.top1_top5
    return WeightsEntry(
        name=stem,
        url=info.url,
        kind="kinetics",
        dataset="Kinetics-400",
        num_classes=400,
        licence=_AUTHORS_LICENCE,
        reference=_AUTHORS_README,
        model=info.model,
        variant=info.variant,
        backbone_norm=info.backbone_norm,
        frames=info.frames,
        sample_rate=info.sample_rate,
        metrics={"top1": top1, "top5": top5},
        paper_metrics={"top1": paper_top1} if paper_top1 is not None else {},
        aliases=(info.file_name,),
        notes=notes,
    )


def _authors_archive(member: str, model: str | None, notes: str, **fields: Any) -> WeightsEntry:
    """A file inside the authors' ``pretrained_model.tar.gz`` (their README, "ImageNet pre-trained
    models"; member paths as their scripts name them)."""
    stem = member.removesuffix(".pkl").replace("/", "_")
    return WeightsEntry(
        name=stem,
        url=_AUTHORS_BASE + "pretrained_model.tar.gz",
        member=member,
        licence=_AUTHORS_LICENCE,
        reference=_AUTHORS_README,
        model=model,
        notes=notes,
        aliases=(Path(member).name,) if "/" not in member else (),
        **fields,
    )


def _torchvision(
    name: str, file: str, enum: str, kind: str, model: str | None, **fields: Any
) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        url=_TORCHVISION_BASE + file,
        kind=kind,
        licence=_TORCHVISION_LICENCE,
        reference=_TORCHVISION_DOCS,
        model=model,
        aliases=(enum, file),
        **fields,
    )


_FINE_TUNED = (
    "frozen BN (affine layers), fine-tuned from the I3D 8x8 baseline: the authors' best models "
    "(run_i3d_{}_affine_400k{}.sh)"
)


@functools.cache
def _catalogue() -> dict[str, WeightsEntry]:
    """Every entry by name (built on first use: the Kinetics entries ask the released-file table)."""
    return {e.name: e for e in _authors_entries() + _torchvision_entries()}


def _authors_entries() -> list[WeightsEntry]:
    """The authors' Kinetics models and the ImageNet files of their archive."""
    return [
        # the authors' README, "Main Results": R50, 32 frames (and 128 frames), 400k iterations
        _kinetics("c2d_baseline_32x2_IN_pretrain_400k", 71.8),
        _kinetics("c2d_nonlocal_32x2_IN_pretrain_400k", 73.8),
        _kinetics("i3d_baseline_32x2_IN_pretrain_400k", 73.3),
        _kinetics("i3d_nonlocal_32x2_IN_pretrain_400k", 74.9),
        _kinetics("i3d_baseline_128x1_I3D_pretrain_400k", 74.9, _FINE_TUNED.format("baseline", "_128f")),
        _kinetics("i3d_nonlocal_128x1_I3D_pretrain_400k", 76.5, _FINE_TUNED.format("nlnet", "_128f")),
        # "Modifications for improving speed": sparser inputs (8x8, 32x4)
        _kinetics("c2d_baseline_8x8_IN_pretrain_400k"),
        _kinetics("c2d_nonlocal_8x8_IN_pretrain_400k"),
        _kinetics("i3d_baseline_8x8_IN_pretrain_400k"),
        _kinetics("i3d_nonlocal_8x8_IN_pretrain_400k"),
        _kinetics("i3d_baseline_32x4_I3D_pretrain_400k", notes=_FINE_TUNED.format("baseline", "")),
        _kinetics("i3d_nonlocal_32x4_I3D_pretrain_400k", notes=_FINE_TUNED.format("nlnet", "")),
        # "Fewer training iterations"; "Training with fewer GPUs" (X. Wang, 4 GPUs, data of 12/20/2017)
        _kinetics("i3d_baseline_8x8_IN_pretrain_300k", notes="300k iterations"),
        _kinetics("i3d_baseline_8x8_IN_pretrain_600k_4gpu", notes="4 GPUs, 600k iterations, fewer videos"),
        _kinetics(
            "i3d_baseline_8x8_IN_pretrain_300k_4gpu",
            notes="4 GPUs, 300k iterations, less regularisation: the quick sanity-check baseline",
        ),
        # the ImageNet Caffe2 ResNets the authors initialise from (pretrained_model.tar.gz)
        _authors_archive(
            "r50_pretrain_c2_model_iter450450_clean.pkl",
            None,
            "the authors' Caffe2 ImageNet ResNet-50 that every IN_pretrain model starts from; inflated "
            "into any R50 registry model (accuracy not published)",
            kind="imagenet",
            dataset="ImageNet-1K",
            num_classes=1000,
        ),
        _authors_archive(
            "r101_pretrain_c2_model_iter450450_clean.pkl",
            None,
            "the authors' Caffe2 ImageNet ResNet-101 (their README's R101 setting); inflated into any "
            "R101 registry model (accuracy not published)",
            kind="imagenet",
            dataset="ImageNet-1K",
            num_classes=1000,
        ),
        _authors_archive(
            "run_i3d_baseline_400k/affine_model_400k.pkl",
            "i3d_r50_8x8",
            "i3d_baseline_8x8_IN_pretrain_400k with its BN folded into affine layers "
            "(modify_caffe2_ftvideo.py): the authors' starting point of the frozen-BN models; "
            "loads into i3d_r50_8x8 or i3d_nl5_r50_8x8 (backbone_norm affine, released variant; the "
            "non-local blocks start as the identity)",
            kind="kinetics",
            dataset="Kinetics-400",
            num_classes=400,
            variant="released",
            backbone_norm="affine",
            frames=8,
            sample_rate=8,
        ),
    ]


def _torchvision_entries() -> list[WeightsEntry]:
    """torchvision's files the project uses: ImageNet ResNets to inflate, COCO detectors."""
    return [
        # torchvision's ImageNet ResNets (IMAGENET1K_V1: the classic recipe), for inflation
        _torchvision(
            "resnet50_imagenet1k_v1",
            "resnet50-0676ba61.pth",
            "ResNet50_Weights.IMAGENET1K_V1",
            "imagenet",
            None,
            dataset="ImageNet-1K",
            num_classes=1000,
            metrics={"acc@1": 76.13, "acc@5": 92.862},
            notes="inflated into any R50 registry model (model.init, build_model(weights=...))",
        ),
        _torchvision(
            "resnet101_imagenet1k_v1",
            "resnet101-63fe2227.pth",
            "ResNet101_Weights.IMAGENET1K_V1",
            "imagenet",
            None,
            dataset="ImageNet-1K",
            num_classes=1000,
            metrics={"acc@1": 77.374, "acc@5": 93.546},
            notes="inflated into any R101 registry model",
        ),
        # torchvision's COCO detectors, the baselines of the paper's section 6
        _torchvision(
            "maskrcnn_resnet50_fpn_coco_v1",
            "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
            "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
            "detector",
            "maskrcnn_r50_fpn",
            dataset="COCO-val2017",
            num_classes=91,
            metrics={"box_map": 37.9, "mask_map": 34.6},
            notes="detection.weights of maskrcnn_r50_fpn and maskrcnn_r50_fpn_nl (the block starts as "
            "the identity)",
        ),
        _torchvision(
            "keypointrcnn_resnet50_fpn_coco_v1",
            "keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
            "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
            "detector",
            "keypointrcnn_r50_fpn",
            dataset="COCO-val2017",
            num_classes=2,
            metrics={"box_map": 54.6, "kp_map": 65.0},
            notes="detection.weights of the keypointrcnn_r50_fpn models",
        ),
    ]


@functools.cache
def _aliases() -> dict[str, str]:
    out = {}
    for entry in _catalogue().values():
        for alias in (entry.name, *entry.aliases):
            out[alias] = out[alias.lower()] = entry.name
    return out


def list_weights(*, model: str | None = None, kind: str | None = None) -> list[str]:
    """Every catalogue name in its order (the authors' README's tables, then torchvision's);
    ``model``: only the files that load into that registry or detector model as they are;
    ``kind``: one of :data:`KINDS`."""
    if kind is not None and kind not in KINDS:
        raise InvalidValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return [
        e.name
        for e in _catalogue().values()
        if (model is None or e.model == model) and (kind is None or e.kind == kind)
    ]


def is_weights_name(value: object) -> bool:
    """Whether ``value`` names a catalogue entry (its name, an alias, its file name)."""
    return isinstance(value, str) and (value in _aliases() or value.lower() in _aliases())


def get_weights(name: str | WeightsEntry) -> WeightsEntry:
    """The entry ``name`` (or an alias: ``ResNet50_Weights.IMAGENET1K_V1``, the file name); an
    entry is returned as it is (an entry of one's own, e.g. for a mirror's file)."""
    if isinstance(name, WeightsEntry):
        return name
    if not isinstance(name, str):
        raise InvalidTypeError(f"a weights name must be a str, got {type(name).__name__}")
    found = _aliases().get(name) or _aliases().get(name.lower())
    if found is None:
        close = difflib.get_close_matches(name, list(_catalogue()), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InvalidValueError(
            f"unknown weights {name!r}.{hint} `nonlocalnet weights` lists them all "
            f"({', '.join(_catalogue())})"
        )
    return _catalogue()[found]


def _url(entry: WeightsEntry, mirror: str | None) -> str:
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return entry.url
    return mirror.rstrip("/") + "/" + entry.url.rsplit("/", 1)[-1]


def cache_paths(name: str | WeightsEntry, *, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where the weights ``name`` go in the cache: ``(download, usable file)``, the published file
    (where to put it by hand) and the file that is loaded (the same for a ``.pth``; for a
    ``.pkl``, its safetensors conversion)."""
    entry = get_weights(name)
    folder = resolve_cache_dir(cache_dir)
    raw = folder / entry.url.rsplit("/", 1)[-1]
    return raw, (folder / f"{entry.name}.safetensors" if entry.converted else raw)


def download_weights(
    entry: WeightsEntry, raw: Path, *, mirror: str | None = None, progress: bool = True
) -> str:
    """The published file of ``entry`` at ``raw`` (:func:`cache_paths`'s first path): downloaded
    unless it is there (``progress``: a bar; ``mirror``: see :data:`MIRROR_ENV`), and one that was
    there before is checked against the published hash where one is known. Returns the URL."""
    url = _url(entry, mirror)
    there = raw.is_file()
    download_file(url, raw, sha256=entry.sha256, hash_prefix=entry.hash_prefix, progress=progress)
    if there:  # put by hand or by torchvision: checked before it is used
        _check_present(raw, entry)
    return url


def _check_present(raw: Path, entry: WeightsEntry) -> None:
    """A file that was in the cache before this call is the published one (where a hash is known)."""
    if not (entry.sha256 or entry.hash_prefix):
        return
    try:
        check_file(raw, sha256=entry.sha256, hash_prefix=entry.hash_prefix)
    except ChecksumError as err:
        raise ChecksumError(
            f"{err}: it is not the published {entry.file_name}; delete it to download it again ({entry.url})"
        ) from None


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """The regular file ``member`` (matched by its path's end) of ``archive``, written to ``dest``
    (atomically)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            hits = [m for m in files if m.name == member or m.name.endswith("/" + member)]
            if len(hits) != 1:
                listing = ", ".join(m.name for m in files[:20])
                raise InvalidValueError(
                    f"{archive}: {'no' if not hits else 'more than one'} file {member!r} in the archive "
                    f"(it holds: {listing}{', ...' if len(files) > 20 else ''})"
                )
            data = tar.extractfile(hits[0])
            assert data is not None  # a regular file
            atomic_write_bytes(dest, data.read())
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise InvalidValueError(
            f"{archive} is not a readable archive ({err}); delete it to download it again"
        ) from err
    return dest


def released_info(entry: WeightsEntry | str) -> ReleasedCheckpoint:
    """The network Kinetics weights ``entry`` belong to (their :class:`ReleasedCheckpoint`: the
    released-file table's, or for an archive's file, the entry's own settings)."""
    entry = get_weights(entry)
    if entry.kind != "kinetics":
        raise InvalidValueError(f"{entry.name} are {entry.kind} weights, not a Kinetics video model")
    known = released_checkpoint_info(entry.file_name)
    if known is not None:
        return known
    return ReleasedCheckpoint(
        entry.file_name, str(entry.model), str(entry.backbone_norm), entry.frames or 32,
        entry.sample_rate or 2, url=entry.url, variant=str(entry.variant),
    )  # fmt: skip


def check_weights_fit(
    model: nn.Module, entry: WeightsEntry | str, *, keys: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`~nonlocalnet.models.ReleasedModelMismatchError` unless the Kinetics weights
    ``entry`` belong to the :class:`VideoResNet` ``model`` (:func:`check_model_matches`: registry
    model and so frame geometry, variant, BN form, ...). A baseline file also fits the same
    network with non-local blocks (they start as the identity: the authors' fine-tuning recipe).
    ``keys``: how the caller spells each setting (e.g. config keys), for the message."""
    info = released_info(entry)
    try:
        check_model_matches(model, info, keys=keys)
    except ReleasedModelMismatchError:
        if _without_nonlocal(info.model) == info.model:
            for sibling in list_models("video"):
                if sibling != info.model and _without_nonlocal(sibling) == info.model:
                    with contextlib.suppress(ReleasedModelMismatchError):
                        check_model_matches(model, dataclasses.replace(info, model=sibling), keys=keys)
                        return
        raise


def _without_nonlocal(name: str) -> str:
    """A registry name without its ``_nl{1,5,10}`` part (``i3d_nl5_r50_8x8`` -> ``i3d_r50_8x8``)."""
    return "_".join(p for p in name.split("_") if not (p.startswith("nl") and p[2:].isdigit()))


def video_weights(name: str | WeightsEntry) -> WeightsEntry:
    """The entry ``name`` (:func:`get_weights`), which must be a video model's weights (Kinetics or
    ImageNet): detector weights are an error naming where they go."""
    entry = get_weights(name)
    if entry.kind == "detector":
        raise InvalidValueError(
            f"{entry.name} are {entry.model} detector weights: give them to a detector "
            f"(detection.weights: {entry.name}, or build_detector({entry.model!r}, weights=...)), "
            "not to a video model"
        )
    return entry


def check_kinetics_build(
    entry: WeightsEntry, name: str, *, num_classes: int | None, variant: str | None, backbone_norm: str | None
) -> None:
    """Raise :class:`~nonlocalnet.models.ReleasedModelMismatchError` unless
    ``build_model(name, num_classes=..., variant=..., backbone_norm=..., weights=entry)`` builds
    the network the Kinetics weights ``entry`` belong to (``None``: the weights choose; a baseline
    file also fits the same network with non-local blocks), before anything is downloaded. The
    message names each argument and the fix."""
    wanted = {
        "num_classes": entry.num_classes,
        "variant": entry.variant,
        "backbone_norm": entry.backbone_norm,
    }
    given = {"num_classes": num_classes, "variant": variant, "backbone_norm": backbone_norm}
    lines = [
        f"{key}={given[key]!r}, but {entry.name} has {key} {wanted[key]!r}"
        for key in wanted
        if given[key] is not None and given[key] != wanted[key]
    ]
    if name != entry.model and not (
        _without_nonlocal(str(entry.model)) == entry.model and _without_nonlocal(name) == entry.model
    ):
        lines.append(f"build_model({name!r}), but {entry.name} are the weights of {entry.model}")
    if lines:
        raise ReleasedModelMismatchError(
            f"{entry.name} are the weights of {released_info(entry).describe()}:\n  "
            + "\n  ".join(lines)
            + f"\nbuild_model({entry.model!r}, weights={entry.name!r}) builds that network (leave "
            "num_classes, variant and backbone_norm unset: the weights choose them); to fine-tune to N "
            f"classes: model = build_model({entry.model!r}, num_classes=N, variant={entry.variant!r}, "
            f"backbone_norm={entry.backbone_norm!r}); load_named_weights(model, {entry.name!r}) "
            "re-initialises the "
            "classifier"
        )
