"""Segment Anything as a segmenter: ``SAMSegmenter`` on the real ``segment-anything`` package.

The image is handed to SAM as RGB ``uint8`` (the reference code fed BGR by mistake), optionally
resized so that its longer side is ``image_size`` with the aspect ratio kept (the reference
squashed images to 224 x 224); the automatic mask generator's masks are mapped back to the
classifier's input grid by nearest-neighbour resizing and turned into a partition with
[`to_partition`][ctc_plugin.features.partition.to_partition]. Results are cached on disk by image
content and settings, so explaining the same image twice runs SAM once.

Checkpoints are read as data only by [`read_state_dict`][ctc_plugin.files.read_state_dict] (an
empty, truncated or corrupt file is one clear error naming it); nothing is downloaded.
"""

from __future__ import annotations

import inspect
import os
import textwrap
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ctc_plugin.features.base import FeatureTable, Segmenter, feature_table
from ctc_plugin.features.cache import MaskCache
from ctc_plugin.features.partition import check_partition_options, sam_record_mask, to_partition
from ctc_plugin.files import read_state_dict, short_load_error, unwrapped_state
from ctc_plugin.inputs import is_finite_number, is_integer
from ctc_plugin.module_state import DigestMemo, WeightsWatch
from ctc_plugin.weights import file_identity

__all__ = ["SAM_MODEL_TYPES", "SAMSegmenter", "build_tiny_sam", "load_sam"]

CHECKPOINT_HINT = (
    "pass checkpoint=PATH to SAMSegmenter (command line: --sam-checkpoint PATH); the official "
    "checkpoints are sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth and sam_vit_h_4b8939.pth from "
    "the segment-anything project"
)

MODEL_TYPE_HINT = (
    "pass the model_type the checkpoint was trained as (the file name usually says: vit_b, vit_l "
    "or vit_h)"
)

_SAM_SCORES = ("predicted_iou", "stability_score")


def build_tiny_sam(
    img_size: int = 64,
    patch_size: int = 8,
    embed_dim: int = 16,
    prompt_dim: int = 16,
    mask_gain: float = 20.0,
    seed: int | None = 0,
) -> Sam:
    """Build a tiny, randomly initialised SAM from ``segment_anything.modeling`` (for tests).

    It has the real SAM architecture (ViT image encoder, prompt encoder, two-way transformer mask
    decoder) at a toy size: about 16k parameters, and a full automatic mask generation with
    ``points_per_side=4`` takes a few tens of milliseconds on a CPU. Its masks are random shapes,
    not objects, and its quality scores are low: run it with ``pred_iou_thresh=0`` and
    ``stability_score_thresh=0`` to keep them. It exists so that tests, tutorials and benchmarks
    can run the real SAM code path without a 375 MB checkpoint.
    ``SAMSegmenter(model_type="tiny")`` builds this architecture.

    Args:
        img_size: Input side of the image encoder (images are resized to it, longest side).
        patch_size: ViT patch size; ``img_size / patch_size`` is the embedding grid.
        embed_dim: Width of the image encoder.
        prompt_dim: Width of the prompt encoder and mask decoder (a multiple of 8).
        mask_gain: Factor on the last layer of the decoder's hypernetwork MLPs. At random
            initialisation the mask logits are tiny and nearly the same for every prompt; the gain
            makes them vary between prompts, so that the generator finds several masks.
        seed: Seed for the random initialisation (``None``: do not seed).
    """
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        grid = img_size // patch_size
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=1,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=False,
                window_size=0,
                global_attn_indexes=(),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=prompt_dim,
                transformer=TwoWayTransformer(
                    depth=1, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2
                ),
                num_multimask_outputs=3,
                iou_head_depth=2,
                iou_head_hidden_dim=prompt_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(mask_gain)
    return sam.eval()


SAM_MODEL_TYPES: dict[str, Callable[..., Sam]] = {
    **{name: builder for name, builder in sam_model_registry.items()},
    "tiny": lambda checkpoint=None: build_tiny_sam(),
}
"""Architectures ``model_type`` can name: segment-anything's registry plus ``"tiny"``."""


def load_sam(
    checkpoint: str | os.PathLike[str] | None,
    model_type: str = "vit_b",
    registry: Mapping[str, Callable[..., torch.nn.Module]] | None = None,
    *,
    what: str = "SAM checkpoint",
    hint: str = CHECKPOINT_HINT,
    model_type_hint: str = MODEL_TYPE_HINT,
) -> Sam:
    """Build a SAM architecture and load a checkpoint into it safely.

    Args:
        checkpoint: Path to a state-dict checkpoint (``.pth``).
        model_type: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` (``"default"`` is ``"vit_h"``) or
            ``"tiny"`` (see [`build_tiny_sam`][ctc_plugin.adapters.sam.build_tiny_sam]).
        registry: Builders by ``model_type``, each called as ``builder(checkpoint=None)``
            (default: [`SAM_MODEL_TYPES`][ctc_plugin.adapters.sam.SAM_MODEL_TYPES]; the MobileSAM
            adapter passes its own).
        what: What the file is, in the messages (the SAM 2 and MobileSAM adapters name theirs).
        hint: How to give the checkpoint and which files are meant, in the messages about a
            missing one.
        model_type_hint: What to do, in the message about a checkpoint that does not match
            ``model_type``.

    Raises:
        ValueError: Without a checkpoint, for an unknown ``model_type``, an unreadable file (the
            message of [`ctc_plugin.files.read_state_dict`][ctc_plugin.files.read_state_dict]:
            empty, truncated or corrupt, not a ``torch.save`` file, objects other than tensors, a
            folder, no state dict on its own or under ``"model"`` or ``"state_dict"``), or a
            checkpoint that does not match ``model_type`` (the message lists the missing and
            unexpected keys; a segment-anything ViT of another size than a ``vit_*`` or
            ``"default"`` ``model_type`` is refused by its image encoder's width before the
            architecture is built, and the message names the ``model_type`` of that width).
            Keys prefixed by a wrapper (``module.``) or by the attribute of a training module
            that held the model (Lightning's ``model.``) load (see
            [`unwrapped_state`][ctc_plugin.files.unwrapped_state]).
        FileNotFoundError: If the checkpoint file does not exist.
    """
    registry = SAM_MODEL_TYPES if registry is None else registry
    if model_type not in registry:
        raise ValueError(f"model_type must be one of {sorted(registry)}, got {model_type!r}")
    if checkpoint is None:
        raise ValueError(f"no {what} was given: {hint}")
    path = Path(checkpoint).expanduser()
    if not path.exists():  # a folder or a damaged file gets read_state_dict's message
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist: {hint}")
    state = read_state_dict(path, what)
    _check_vit_size(state, path, what, model_type)  # before a build of seconds and gigabytes
    sam = registry[model_type](checkpoint=None)
    state = unwrapped_state(sam, state)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = short_load_error(str(error)).split(":", 1)[-1].strip()
        advice = _checkpoint_advice(state, what, model_type) or model_type_hint
        raise ValueError(
            f"{what} {str(path)!r} does not match model_type={model_type!r} "
            f"({textwrap.shorten(detail, 500, placeholder=' ...')}); {advice}"
        ) from error
    return sam.eval()


#: segment-anything's ViT image encoders by width (``patch_embed.proj`` output channels).
_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
#: The ViT size each ``model_type`` of those builds (``"default"`` is segment-anything's vit_h).
_VIT_SIZES = {"vit_b": "vit_b", "vit_l": "vit_l", "vit_h": "vit_h", "default": "vit_h"}
#: The key of a segment-anything ViT's patch embedding, whose output channels are its width.
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def _encoder_width(state: Mapping[str, Any]) -> int | None:
    """The width of the segment-anything ViT image encoder in ``state``, if it holds one.

    Read from the patch embedding's weight, also under a wrapper's prefix (``module.``).
    """
    for key, value in state.items():
        if key == _PATCH_KEY or key.endswith(f".{_PATCH_KEY}"):
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                return int(value.shape[0])
    return None


def _vit_advice(width: int, what: str) -> str:
    """The advice for a checkpoint holding a segment-anything ViT ``width`` wide."""
    where = "; SAMSegmenter loads it" if what == "SAM 2 checkpoint" else ""
    return f"it holds an image encoder {width} wide: model_type={_VIT_WIDTHS[width]!r}{where}"


def _check_vit_size(state: Mapping[str, Any], path: Path, what: str, model_type: str) -> None:
    """Refuse a segment-anything ViT checkpoint of another size than ``model_type``'s.

    Called before the architecture is built: a vit_b checkpoint given as ``vit_h`` would
    otherwise build the 2.5 GB vit_h (seconds) only to fail loading into it.

    Raises:
        ValueError: The message the failed load gives, naming the ``model_type`` of the width.
    """
    asked = _VIT_SIZES.get(model_type)
    width = _encoder_width(state)
    held = _VIT_WIDTHS.get(width) if width is not None else None
    if asked is None or held is None or held == asked:
        return
    expected = {size: wide for wide, size in _VIT_WIDTHS.items()}[asked]
    raise ValueError(
        f"{what} {str(path)!r} does not match model_type={model_type!r} ({asked}'s image "
        f"encoder is {expected} wide); {_vit_advice(width, what)}"
    )


def _checkpoint_advice(state: Mapping[str, Any], what: str, model_type: str) -> str | None:
    """What the keys of a checkpoint that did not load say it is, where that tells what to do.

    A SAM 2 or MobileSAM checkpoint (keys only those hold) given to another segmenter: the
    segmenter that loads it. A segment-anything ViT: the ``model_type`` of its width.
    """
    if any(key.startswith("image_encoder.trunk.") or key == "maskmem_tpos_enc" for key in state):
        kind, segmenter = "SAM 2 checkpoint", "SAM2Segmenter"
    elif any(key.startswith("image_encoder.layers.") for key in state):
        kind, segmenter = "MobileSAM checkpoint", "MobileSAMSegmenter (model_type='vit_t')"
    else:
        width = _encoder_width(state)
        size = _VIT_WIDTHS.get(width) if width is not None else None
        if size is None or size == _VIT_SIZES.get(model_type, model_type):
            return None
        return _vit_advice(width, what)
    return None if kind == what else f"it looks like a {kind}: {segmenter} loads it"


def _file_identity(path: Path) -> str:
    """Identify a checkpoint file cheaply (hashing a 2.5 GB ViT-H file would take seconds)."""
    resolved, size, modified, inode = file_identity(path)
    return f"file:{resolved}:{size}:{modified}:{inode}"


#: The automatic mask generator's options that are real numbers (thresholds and ratios).
GENERATOR_THRESHOLDS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "crop_nms_thresh",
    "crop_overlap_ratio",
)

#: The largest ``image_size``: SAM's encoder works at 1024 pixels, so larger images only cost
#: memory (the generator's masks are made at the image's size).
MAX_IMAGE_SIZE = 4096


#: The thresholds of `GENERATOR_THRESHOLDS` that are fractions in [0, 1] (IoUs and scores).
FRACTION_THRESHOLDS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_nms_thresh",
    "crop_overlap_ratio",
)


def _check_generator_options(options: dict[str, Any]) -> None:
    """Refuse generator options that would fail only when SAM has already run (or divide by 0).

    Raises:
        ValueError: ``points_per_side`` or ``points_per_batch`` that is not an int of at least
            1 (``points_per_side=None`` without ``point_grids``, ``point_grids`` without
            ``points_per_side=None``, or grids refused by `_check_point_grids`),
            ``crop_n_layers`` below 0 or ``crop_n_points_downscale_factor`` below 1 (or not
            ints, or leaving the last crop layer without points), a threshold or ratio
            (`GENERATOR_THRESHOLDS`) that is not a finite number, or not in [0, 1] for the
            fractions among them (`FRACTION_THRESHOLDS`), a negative
            ``min_mask_region_area`` (or a positive one without OpenCV), or an ``output_mode``
            other than ``"binary_mask"``, ``"uncompressed_rle"`` and ``"coco_rle"`` (the last
            one without ``pycocotools`` installed).
    """
    for name in ("points_per_side", "points_per_batch"):
        value = options.get(name)
        if value is not None and (not is_integer(value) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if "points_per_side" in options and options["points_per_side"] is None:
        if options.get("point_grids") is None:
            raise ValueError(
                "points_per_side=None needs point_grids= (the points to prompt SAM with); leave "
                "points_per_side out for its default grid"
            )
    for name, least in (("crop_n_layers", 0), ("crop_n_points_downscale_factor", 1)):
        value = options.get(name)
        if value is not None and (not is_integer(value) or value < least):
            raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
    side, layers = options.get("points_per_side", 32), options.get("crop_n_layers") or 0
    factor = options.get("crop_n_points_downscale_factor") or 1
    if side is not None and int(side / factor**layers) < 1:  # SAM's grid builder divides by it
        raise ValueError(
            f"crop layer {layers} would get int(points_per_side / "
            f"crop_n_points_downscale_factor**{layers}) = 0 points per side: raise "
            "points_per_side, or lower crop_n_layers or crop_n_points_downscale_factor"
        )
    if options.get("point_grids") is not None:
        if options.get("points_per_side", "default") is not None:
            raise ValueError(
                "point_grids= replaces points_per_side: pass points_per_side=None with it (the "
                "generator takes one or the other, and points_per_side has a default)"
            )
        _check_point_grids(options["point_grids"], int(options.get("crop_n_layers") or 0))
    for name in GENERATOR_THRESHOLDS:
        value = options.get(name)
        if value is not None and not is_finite_number(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value is not None and name in FRACTION_THRESHOLDS and not 0 <= value <= 1:
            raise ValueError(
                f"{name} is a fraction between 0 and 1 (an IoU, a score or a ratio), got {value!r}"
            )
    area = options.get("min_mask_region_area")
    if area is not None and not (is_finite_number(area) and area >= 0):
        raise ValueError(f"min_mask_region_area must be a number of at least 0, got {area!r}")
    if area:
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ValueError(
                f"min_mask_region_area={area!r} needs OpenCV, with which the mask generator "
                "removes small regions (pip install opencv-python-headless); or leave it 0 "
                "(the default): min_area= merges small uncovered fragments without it"
            ) from error
    mode = options.get("output_mode", "binary_mask")
    if mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
        raise ValueError(
            f"output_mode must be 'binary_mask', 'uncompressed_rle' or 'coco_rle', got {mode!r}"
        )
    if mode == "coco_rle":
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError as error:
            raise ValueError(
                "output_mode='coco_rle' needs pycocotools (pip install pycocotools); the "
                "default 'binary_mask' gives the same features without it"
            ) from error


def _check_point_grids(grids: Any, crop_n_layers: int) -> None:
    """Refuse ``point_grids`` that are not one grid of points in the unit square per crop layer.

    Raises:
        ValueError: ``grids`` is no list of ``(n, 2)`` arrays (or one ``(layers, n, 2)`` array,
            which segment-anything indexes as well) of finite values in [0, 1] (points
            ``x, y`` as fractions of the image's width and height), or holds another number of
            grids than ``crop_n_layers + 1``.
    """
    wanted = (
        "point_grids must be a list of (n, 2) arrays, one per crop layer, of points (x, y) as "
        "fractions of the image's width and height, in [0, 1]"
    )
    if isinstance(grids, np.ndarray) and grids.ndim == 3:  # (layers, n, 2), as SAM indexes it
        grids = list(grids)
    if not isinstance(grids, list | tuple):
        raise ValueError(f"{wanted}; got {type(grids).__name__} (wrap one grid in a list)")
    for index, grid in enumerate(grids):
        try:
            array = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{wanted}; grid {index} is no array of numbers") from error
        if array.ndim != 2 or array.shape[1] != 2 or not len(array):
            raise ValueError(f"{wanted}; grid {index} has shape {array.shape}")
        if not (np.isfinite(array).all() and 0 <= array.min() and array.max() <= 1):
            raise ValueError(
                f"{wanted}; grid {index} holds values from {array.min():.4g} to {array.max():.4g}"
            )
    if len(grids) != crop_n_layers + 1:
        raise ValueError(
            f"point_grids holds one grid per crop layer, {crop_n_layers + 1} for "
            f"crop_n_layers={crop_n_layers}, got {len(grids)}"
        )


def _check_option_names(generator_class: Any, options: Mapping[str, Any]) -> None:
    """Refuse options that the mask generator class does not name among its parameters.

    SAM 2's ``SAM2AutomaticMaskGenerator`` takes any keyword and ignores those it does not know,
    so without this a misspelt option would be accepted and change nothing but the cache key.

    Raises:
        TypeError: An option that is no parameter of ``generator_class`` (the message lists the
            ones it takes).
    """
    parameters = list(inspect.signature(generator_class).parameters.values())[1:]  # the model
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(named))
    if unknown:
        raise TypeError(
            f"{generator_class.__name__} has no option {', '.join(map(repr, unknown))}; its "
            f"options are {', '.join(named)}"
        )


#: The segmenter that takes the models of each SAM package (their model classes share names).
SEGMENTER_OF_PACKAGE = {
    "segment_anything": "SAMSegmenter",
    "mobile_sam": "MobileSAMSegmenter",
    "sam2": "SAM2Segmenter",
}


def wrong_model_message(model: Any, expected: str) -> str:
    """The message for a ``model`` that is not ``expected``: its class by module and name.

    segment-anything's and MobileSAM's model classes are both called ``Sam``; the message names
    the package and, for another SAM package's model, the segmenter that takes it.
    """
    kind = type(model)
    segmenter = SEGMENTER_OF_PACKAGE.get(kind.__module__.partition(".")[0])
    advice = f"; {segmenter} takes it" if segmenter else ""
    return f"model must be {expected}, got {kind.__module__}.{kind.__qualname__}{advice}"


def _check_float32(model: torch.nn.Module) -> None:
    """Refuse a model whose floating parameters are not float32: SAM runs on float32 images."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ValueError(
            f"the SAM model's parameters are {found}: the segmenter runs it on float32 images; "
            "give model.float()"
        )


class SAMSegmenter(Segmenter):
    """Segment Anything's automatic masks as features.

    Args:
        checkpoint: Path to a segment-anything checkpoint (needed unless ``model`` is given).
        model_type: Architecture of the checkpoint: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or
            ``"tiny"`` (tests).
        model: An already built ``segment_anything.modeling.Sam`` in float32 (instead of a
            checkpoint); it is put in eval mode (and moved to ``device``) in place, and
            ``model_type`` is not read.
        device: Where SAM runs (default: where the model's parameters are, CPU for checkpoints).
        image_size: Longer side, in pixels, of the image SAM is given (aspect ratio kept; SAM
            itself then resizes to its encoder's 1024). ``None``: the classifier's resolution.
        cache: ``True`` (default) for the default cache folder, a folder path, a
            [`MaskCache`][ctc_plugin.features.cache.MaskCache], or ``None``/``False`` for none.
        dilation: Dilation of the masks before they become a partition (``"auto"``:
            ``ceil(W / 100)`` at the classifier's width).
        min_area: Smallest remainder component kept as a feature (see ``to_partition``).
        remainder: ``"components"`` or ``"single"`` (see ``to_partition``).
        value_range: Range of the (un-normalised) pixel values, or ``"auto"``.
        mean: Per-channel mean the images were normalised with, if any.
        std: Per-channel standard deviation the images were normalised with, if any.
        **generator_options: Passed to ``SamAutomaticMaskGenerator`` (``points_per_side``,
            ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``, ...). The
            published method used the defaults.

    Raises:
        ValueError: Without checkpoint or model (the message names ``checkpoint=`` and
            ``--sam-checkpoint``), with both, or with a checkpoint that does not load.
        TypeError: A ``model`` that is no SAM, or a generator option the mask generator does
            not name (SAM 2's would otherwise ignore it); the given model is then left as it
            was (not moved, not put in eval mode).

    Examples:
        ```python
        segmenter = SAMSegmenter(checkpoint="~/models/sam_vit_b_01ec64.pth", model_type="vit_b")
        feature_mask = segmenter(images)  # (N, 1, H, W), for captum or CTC
        ```
    """

    result_libraries = ("segment-anything", "torch", "torchvision")

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model_type: Literal["vit_b", "vit_l", "vit_h", "default", "tiny"] | str = "vit_b",
        model: Sam | None = None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        cache: MaskCache | str | bool | None = True,
        *,
        dilation: int | Literal["auto"] = "auto",
        min_area: float = 0.001,
        remainder: Literal["components", "single"] = "components",
        value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **generator_options: Any,
    ) -> None:
        super().__init__(value_range=value_range, mean=mean, std=std, cache=cache)
        if image_size is not None and (
            not is_integer(image_size) or not 8 <= image_size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"image_size must be an int from 8 to {MAX_IMAGE_SIZE} pixels (SAM's encoder "
                f"works at 1024), or None; got {image_size!r}"
            )
        check_partition_options(dilation, min_area, remainder)
        _check_generator_options(generator_options)
        self._checkpoint_source: tuple[WeightsWatch | None, str] | None = None
        if model is not None:
            if checkpoint is not None:
                raise ValueError(
                    "give checkpoint= (a file to load) or model= (a model already built), not "
                    "both: the checkpoint would not be loaded into the model"
                )
            self._check_model(model)
        else:
            model = self._load_model(checkpoint, model_type)
        _check_float32(model)
        # built before the model is moved or put in eval mode: a refused option leaves it as given
        generator = self._make_generator(model, dict(generator_options))
        if device is not None:
            model = model.to(device)
        self._model = model.eval()
        if checkpoint is not None:  # the file names the weights until they are changed
            identity = _file_identity(Path(checkpoint).expanduser())
            self._checkpoint_source = (WeightsWatch(self.model), identity)
        self._digests = DigestMemo()  # the model's weights digest, again only when they change
        self._generate_lock = threading.Lock()
        self.model_type = model_type if checkpoint is not None else None  # else: model's own
        self.image_size = image_size
        self.partition_options = {
            "dilation": dilation,
            "min_area": min_area,
            "remainder": remainder,
        }
        self.generator_options = dict(generator_options)
        self.generator = generator

    @property
    def model(self) -> Any:
        """The SAM model the mask generator runs (read-only: build a new segmenter for another).

        Its weights may change (``load_state_dict``, an optimiser step, ``.to()``): the cache
        key follows them ([`model_source`][ctc_plugin.adapters.sam.SAMSegmenter.model_source]).
        """
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__}.model cannot be replaced: the mask generator was built "
            "around the model given at construction and would go on running it; build a new "
            f"{type(self).__name__}(model=...) for another model"
        )

    def _check_model(self, model: Any) -> None:
        """Raise a TypeError unless ``model`` is a SAM model (adapters override this)."""
        if not isinstance(model, Sam):
            raise TypeError(wrong_model_message(model, "a segment_anything.modeling.Sam"))

    def _load_model(self, checkpoint: str | os.PathLike[str] | None, model_type: str) -> Any:
        """Build the architecture and load the checkpoint (adapters override this)."""
        return load_sam(checkpoint, model_type)

    def _generator_class(self) -> Any:
        """The automatic mask generator's class (adapters for SAM variants override this)."""
        return SamAutomaticMaskGenerator

    def _make_generator(self, model: Any, options: dict[str, Any]) -> Any:
        """Build the automatic mask generator, refusing options it does not name."""
        generator_class = self._generator_class()
        _check_option_names(generator_class, options)
        return generator_class(model, **options)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_type={self.model_type!r}, image_size={self.image_size}, "
            f"cache={self.cache!r})"
        )

    @property
    def model_source(self) -> str:
        """What identifies the model's weights in the cache key.

        A checkpoint by its path, size, modification time and inode (hashing a 2.5 GB file
        would take seconds) while the weights loaded from it are unchanged; a model given as a
        module, or the checkpoint's model once a tensor of it was written or replaced
        (``load_state_dict``, ``.to()``), by the sha256 of its weights
        ([`state_digest`][ctc_plugin.module_state.state_digest]), computed again whenever
        they change (as a [`WeightsWatch`][ctc_plugin.module_state.WeightsWatch] sees changes:
        also re-initialisations through ``.data``), so masks of other weights are not served
        from the cache. The watch keeps views of a few values of each weight tensor, which hold
        its memory: weights replaced (``.to()``) are let go when this is next read.
        """
        source = self._checkpoint_source
        if source is not None and source[0] is not None and source[0].unchanged(self.model):
            return source[1]
        return f"model:{self._digests.digest(self.model)[:32]}"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the lock and the mask generator (both are made anew on unpickling).

        The generator is rebuilt from the model and the options: SAM 2's holds TorchScript
        modules, which do not pickle.
        """
        state = self.__dict__.copy()
        state["_generate_lock"] = None
        state["generator"] = None
        source = self._checkpoint_source
        if source is not None:  # tensor addresses do not survive pickling; the identity does
            unchanged = source[0] is not None and source[0].unchanged(self.model)
            state["_checkpoint_source"] = (None, source[1]) if unchanged else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._generate_lock = threading.Lock()
        self.generator = self._make_generator(self.model, self.generator_options)
        if self._checkpoint_source is not None:
            self._checkpoint_source = (WeightsWatch(self.model), self._checkpoint_source[1])

    def settings(self) -> dict[str, Any]:
        """Return every option that changes the result (the cache key)."""
        return {
            "model": self.model_source,
            "image_size": self.image_size,
            "generator": self.generator_options,
            "partition": self.partition_options,
        }

    def sam_input(self, image: np.ndarray) -> np.ndarray:
        """Resize an RGB ``uint8`` image so its longer side is ``image_size`` (aspect kept)."""
        if self.image_size is None:
            return image
        height, width = image.shape[:2]
        scale = self.image_size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == (height, width):
            return image
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        resized = torch.nn.functional.interpolate(
            tensor, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def raw_masks(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Run the automatic mask generator on one RGB ``uint8`` image at SAM's input size.

        One image at a time per segmenter: the generator's predictor holds the image it was
        set, so threads sharing the segmenter take turns (each gets its own image's masks).
        """
        sam_image = np.ascontiguousarray(self.sam_input(image))
        with self._generate_lock, torch.no_grad():
            return self.generator.generate(sam_image)

    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray, FeatureTable]:
        """Segment one RGB ``uint8`` image ``(H, W, 3)`` with SAM and make it a partition."""
        height, width = image.shape[:2]
        records = self.raw_masks(image)
        if records:
            stack = np.stack([np.asarray(sam_record_mask(r), dtype=bool) for r in records])
            if stack.shape[1:] != (height, width):
                resized = torch.nn.functional.interpolate(
                    torch.from_numpy(stack)[:, None].float(),
                    size=(height, width),
                    mode="nearest-exact",
                )
                stack = resized[:, 0].numpy() > 0.5
        else:
            stack = np.zeros((0, height, width), dtype=bool)
        labels, sources = to_partition(
            stack, shape=(height, width), return_sources=True, **self.partition_options
        )
        scores = {
            name: np.array(
                [
                    float(records[s][name]) if s >= 0 and name in records[s] else np.nan
                    for s in sources
                ]
            )
            for name in _SAM_SCORES
        }
        label_map = labels.numpy()
        return label_map, feature_table(label_map, source=sources, scores=scores)
