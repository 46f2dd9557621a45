"""The Explainer: a segmentation network with one mask per class of a frozen classifier."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin._moved import moved_keywords
from ctc_plugin.explainer.maps import check_scale, resize_maps, run_at_scale, select_maps
from ctc_plugin.files import read_data_file, write_torch_file
from ctc_plugin.module_state import state_digest
from ctc_plugin.weights import record_in_manifest

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.explainer.presets import ExplainerHyperparameters
    from ctc_plugin.explainer.training import FitResult

#: Tag stored in files written by [`Explainer.save`][ctc_plugin.Explainer.save].
FILE_FORMAT = "ctc-plugin-explainer/1"


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by GroupNorm (up to 4 groups) and ReLU."""
    groups = math.gcd(4, out_channels)  # 4 groups when the width allows, fewer otherwise
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A small U-Net: ``depth`` resolutions with ``width``, ``2*width``, ... channels.

    Any input size works (the decoder resizes to each skip connection), and the output has
    the input's resolution. Each extra level doubles the receptive field of the deepest
    features (about 32 pixels at ``depth=3``, 70 at ``depth=4``).

    Args:
        in_channels: Channels of the input images.
        num_classes: Output maps.
        width: Channels at full resolution.
        depth: Number of resolutions (at least 2).

    Raises:
        ValueError: If ``depth`` is below 2.
    """

    #: Memory format its inputs run fastest in on a CPU: its thin convolutions run the plain
    #: (contiguous) kernels faster than channels-last ones (``Explainer.input_memory_format``).
    input_memory_format = torch.contiguous_format

    def __init__(self, in_channels: int, num_classes: int, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.depth = depth
        channels = [width * 2**level for level in range(depth)]
        # Modules are named enc1.., dec1.. (the names of the original three-level network).
        for level, out in enumerate(channels, start=1):
            self.add_module(
                f"enc{level}", _conv_block(channels[level - 2] if level > 1 else in_channels, out)
            )
        for level in range(depth - 1, 0, -1):
            out = channels[level - 1]
            self.add_module(f"dec{level}", _conv_block(channels[level] + out, out))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(N, num_classes, H, W)`` logits.

        Raises:
            ValueError: If a side of ``x`` is below ``2 ** (depth - 1)`` pixels: the deepest
                level would pool it to nothing.
        """
        smallest = 2 ** (self.depth - 1)
        if min(x.shape[-2:]) < smallest:
            raise ValueError(
                f"a U-Net of depth {self.depth} needs images of at least {smallest}x{smallest} "
                f"pixels at its input, got {x.shape[-2]}x{x.shape[-1]} (the images resized by "
                "the explainer's input_scale, if below 1): use larger images, a larger "
                "input_scale or a smaller depth"
            )
        skips = []
        for level in range(1, self.depth + 1):
            x = self.get_submodule(f"enc{level}")(F.max_pool2d(x, 2) if level > 1 else x)
            skips.append(x)
        for level in range(self.depth - 1, 0, -1):
            skip = skips[level - 1]
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.get_submodule(f"dec{level}")(torch.cat([up, skip], dim=1))
        return self.head(x)


#: Keyword arguments of the constructor before it took a backbone module (package 0.1, unreleased).
_BUILD_THE_BACKBONE = (
    "build the backbone and pass it: Explainer(build_backbone(name, num_classes, ...), "
    "num_classes) with build_backbone from ctc_plugin.explainer.backbones (the settings of each "
    "named backbone are on its page)"
)


#: The old constructor's keyword arguments that are the backbone's settings now.
_BACKBONE_SETTINGS = (
    "in_channels", "width", "depth", "classifier", "head", "mask_scale", "student_width",
    "backbone_weights",
)  # fmt: skip


#: The old constructor's names of backbone settings that `build_backbone` calls otherwise.
_RENAMED_SETTINGS = {"backbone_weights": "weights"}


def _old_explainer_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Recognise ``Explainer(num_classes, backbone="name", ...)``, the constructor's old form.

    The advice spells out the new call with the old call's backbone settings (a module given
    as ``classifier=`` appears as ``classifier=classifier``), so that pasting it builds the
    same network.
    """
    first = args[1] if len(args) > 1 else kwargs.get("backbone")  # args[0] is self
    settings = "".join(
        f", {_RENAMED_SETTINGS.get(key, key)}="
        f"{key if isinstance(kwargs[key], nn.Module) else repr(kwargs[key])}"
        for key in _BACKBONE_SETTINGS
        if key in kwargs
    )
    own = "".join(  # the explainer's own settings, beside the backbone
        f", {key}={kwargs[key]!r}" for key in ("in_channels", "input_scale") if key in kwargs
    )
    if isinstance(first, str) or (isinstance(first, int) and not isinstance(first, bool)):
        if isinstance(first, int):
            count: Any = first
        else:  # Explainer("name", 6): the new order with a name for the module
            count = args[2] if len(args) > 2 else kwargs.get("num_classes", "num_classes")
        name = first if isinstance(first, str) else kwargs.get("backbone", "unet-small")
        if isinstance(name, nn.Module):  # Explainer(6, backbone=module)
            return f"it takes the backbone module first: Explainer(backbone, {count})"
        return (
            f"it takes the backbone module first, then num_classes: {_BUILD_THE_BACKBONE}, e.g. "
            f"Explainer(build_backbone({name!r}, {count}{settings}), {count}{own})"
        )
    if first is None and "num_classes" in kwargs:
        count = kwargs["num_classes"]
        return (
            f"it needs the backbone module: {_BUILD_THE_BACKBONE}, e.g. "
            f"Explainer(build_backbone('unet-small', {count}{settings}), {count}{own})"
        )
    return None


#: The casts of the classifier an explainer records (`Explainer.record_classifier`): as it is,
#: float16 and bfloat16 (a half-precision copy for speed explains the same classifier).
RECORDED_CASTS: tuple[torch.dtype | None, ...] = (None, torch.float16, torch.bfloat16)


def classifier_record(classifier: nn.Module, digest: str | None = None) -> Tensor:
    """What an explainer records of its classifier: a ``(len(RECORDED_CASTS), 32)`` uint8 tensor.

    One `ctc_plugin.module_state.state_digest` per cast of `RECORDED_CASTS` (``digest``, when
    given, is the first: the classifier as it is).
    """
    digests = [
        digest if cast is None and digest else state_digest(classifier, cast)
        for cast in RECORDED_CASTS
    ]
    return torch.tensor([list(bytes.fromhex(d)) for d in digests], dtype=torch.uint8)


class Explainer(nn.Module):
    """A mask network: one logit map per class at input resolution; masks are their sigmoid.

    Stalder et al. (NeurIPS 2022) train a segmentation network against a frozen classifier
    so that the mask of class ``c`` keeps exactly the evidence the classifier uses for ``c``.
    Train it with [`fit`][ctc_plugin.Explainer.fit]; use it from Captum code through
    [`ExplainerAttribution`][ctc_plugin.ExplainerAttribution].

    The explainer takes its backbone as a module, as Captum's ``LayerGradCam(model, layer)``
    takes the layer: the backbones this package ships are built by name with
    [`build_backbone`][ctc_plugin.explainer.backbones.build_backbone] (which records how, so
    [`save`][ctc_plugin.Explainer.save] can store it), and any other ``nn.Module`` works too.

    Examples:
        >>> from ctc_plugin import Explainer
        >>> from ctc_plugin.explainer.backbones import build_backbone
        >>> explainer = Explainer(build_backbone("unet-small", 6, width=8), 6)  # the default kind
        >>> fast = Explainer(build_backbone("unet-small", 6), 6, input_scale=0.25)

    Args:
        backbone: An ``nn.Module`` mapping ``(N, in_channels, H, W)`` to
            ``(N, num_classes, h, w)`` (a tensor or a dict with ``"out"``); smaller outputs are
            resized bilinearly to ``(H, W)``. Usually one of the named backbones of
            [`ctc_plugin.explainer.backbones`][ctc_plugin.explainer.backbones].
        num_classes: Classes of the classifier to explain.
        in_channels: Channels of the images (default: the backbone's recipe's, else 3).
        input_scale: Factor in (0, 1] by which images are resized (bilinearly) before the
            backbone; the maps are resized back to the input's size. 0.25 runs the backbone on
            a sixteenth of the pixels, at coarser mask boundaries.

    Raises:
        TypeError: If ``backbone`` is not an ``nn.Module`` (a backbone name: build it with
            ``build_backbone``), or for a keyword argument the constructor no longer takes
            (``width=``, ``depth=``, ``classifier=``, ``head=``, ``mask_scale=``,
            ``student_width=``, ``backbone_weights=`` are settings of the named backbones).
        ValueError: For unusable settings, or a backbone built for another class count or
            channel count.
    """

    @moved_keywords(
        hints={
            name: _BUILD_THE_BACKBONE
            for name in (
                "width",
                "depth",
                "classifier",
                "head",
                "mask_scale",
                "student_width",
                "backbone_weights",
            )
        },
        old_call=_old_explainer_call,
    )
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        in_channels: int | None = None,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"backbone must be an nn.Module, got {type(backbone).__name__}; build a named one "
                "with ctc_plugin.explainer.backbones.build_backbone"
            )
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        from ctc_plugin.explainer.backbones import recipe_of

        recipe = recipe_of(backbone)
        built_for = recipe.settings.get("in_channels") if recipe is not None else None
        if in_channels is None:
            in_channels = 3 if built_for is None else int(built_for)
        if recipe is not None and recipe.num_classes != num_classes:
            raise ValueError(
                f"the backbone was built for {recipe.num_classes} classes, the explainer has "
                f"{num_classes}: give build_backbone and Explainer the same num_classes"
            )
        if recipe is not None and built_for is None and in_channels != 3:
            raise ValueError(f"{recipe.name} takes 3-channel images, got in_channels={in_channels}")
        if built_for is not None and built_for != in_channels:
            raise ValueError(
                f"the backbone was built for {built_for}-channel images, the explainer for "
                f"in_channels={in_channels}: give both the same value"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_scale = check_scale("input_scale", input_scale)
        #: Plain data stored with the weights by [`save`][ctc_plugin.Explainer.save] (e.g. how it
        #: was trained): what [`load`][ctc_plugin.Explainer.load] read from its file, the
        #: hyper-parameters [`fit`][ctc_plugin.Explainer.fit] trained it with.
        self.metadata: dict[str, Any] = {}
        self.backbone = backbone
        # Persisted with the weights: how many optimisation steps trained it, and on which size.
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.long))
        # ... and the classifier it was trained for (`record_classifier`; zeros: unknown): its
        # state digest as it is, and as a float16 and a bfloat16 copy of it would hold it.
        self.register_buffer(
            "classifier_digest", torch.zeros(len(RECORDED_CASTS), 32, dtype=torch.uint8)
        )

    #: Entries of the state dict that files and checkpoints of older versions lack: loading such
    #: a state dict leaves them at their unknown value instead of failing.
    ADDED_STATE = ("classifier_digest",)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """``nn.Module``'s loading; a state dict without an `ADDED_STATE` entry keeps it unknown."""
        for name in self.ADDED_STATE:
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    #: The buffers that record how it was trained: the steps, the image size, the classifier.
    TRAINING_RECORD = ("trained_steps", "image_size", "classifier_digest")

    def copy_training_record(self, other: Explainer) -> None:
        """Take `TRAINING_RECORD` from ``other``, whose training this explainer's masks are."""
        with torch.no_grad():
            for name in self.TRAINING_RECORD:
                getattr(self, name).copy_(getattr(other, name))

    def record_classifier(self, classifier: nn.Module, record: Tensor | None = None) -> None:
        """Record ``classifier`` as the model this explainer explains.

        [`fit`][ctc_plugin.Explainer.fit] and the distillation call it; the record is saved and
        loaded with the weights, and [`ExplainerAttribution`][ctc_plugin.ExplainerAttribution]
        warns when it is given a classifier with other weights (a float16 or bfloat16 copy of
        it is the same classifier).

        Args:
            classifier: The explained model.
            record: Its `classifier_record`, when already computed.
        """
        self.classifier_digest.copy_(classifier_record(classifier) if record is None else record)

    @property
    def trained_for(self) -> str | None:
        """The `state_digest` (hex) of the classifier it was trained for; ``None`` if unknown.

        Unknown for untrained explainers and for files written before it was recorded.
        """
        digests = self.trained_for_digests()
        return digests[0] if digests else None

    def trained_for_digests(self) -> tuple[str, ...]:
        """The classifier's `state_digest` as it is, as float16 and as bfloat16; ``()``: unknown."""
        rows = [bytes(row) for row in self.classifier_digest.cpu().tolist()]
        return tuple(row.hex() for row in rows) if any(rows[0]) else ()

    @property
    def backbone_name(self) -> str | None:
        """The backbone's registry name (``"unet-small"``, ...), ``None`` for another module."""
        from ctc_plugin.explainer.backbones import recipe_of

        recipe = recipe_of(self.backbone)
        return None if recipe is None else recipe.name

    @property
    def is_trained(self) -> bool:
        """Whether `fit` (or loaded weights) has trained this explainer."""
        return bool(self.trained_steps.item() > 0)

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The memory format the backbone's inputs run fastest in (channels-last by default).

        Classifier-based backbones run faster on channels-last inputs on a CPU, the small U-Net
        (``"unet-small"``) on contiguous ones (measurements: docs/explainer.md). A backbone states
        its own with an ``input_memory_format`` attribute.
        """
        return getattr(self.backbone, "input_memory_format", torch.channels_last)

    @property
    def trained_image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the images it was trained on; ``None`` when unknown or several sizes.

        [`ExplainerAttribution`][ctc_plugin.ExplainerAttribution] refuses images of another size
        than this one; an explainer trained on images of several sizes explains any size.
        """
        h, w = (int(v) for v in self.image_size.tolist())
        return (h, w) if h > 0 else None

    def __getattr__(self, name: str) -> Any:
        """``nn.Module``'s lookup; the removed ``width`` and ``depth`` name their new call."""
        if name in ("width", "depth"):
            raise AttributeError(
                f"Explainer.{name} was removed: it is a setting of the backbone, read "
                f"explainer.config().get({name!r}) (None where the backbone has no {name})"
            )
        return super().__getattr__(name)

    def forward(self, images: Tensor) -> Tensor:
        """Return the class logit maps ``(N, num_classes, H, W)`` at the input resolution."""
        return resize_maps(self._backbone_maps(images), images.shape[-2:])

    def target_logits(self, images: Tensor, target: Tensor) -> Tensor:
        """Return the logit map of one class per image, ``(N, 1, H, W)``.

        The same values as ``forward(images)[range(N), target]``, but only the selected maps
        are resized to the input (the resizing acts on each map alone), which saves most of the
        resizing when the backbone works at a reduced resolution. A backbone with its own
        ``target_logits(images, target)`` method (the gated backbones) computes only the
        selected maps.

        Args:
            images: ``(N, in_channels, H, W)`` images.
            target: ``(N,)`` class indices.
        """
        return resize_maps(self._backbone_maps(images, target), images.shape[-2:])

    def _backbone_maps(self, images: Tensor, target: Tensor | None = None) -> Tensor:
        """Check the images and return the backbone's maps (of ``target`` only, if given).

        The backbone sees the images resized by ``input_scale``; the maps keep its resolution.
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"the explainer takes images shaped (N, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        selective = getattr(self.backbone, "target_logits", None)
        if target is not None and callable(selective):
            return run_at_scale(partial(selective, target=target), images, self.input_scale)
        out = run_at_scale(self.backbone, images, self.input_scale)
        if isinstance(out, dict):
            out = out["out"]
        if out.dim() != 4 or out.shape[1] != self.num_classes:
            raise ValueError(
                f"the backbone must return (N, {self.num_classes}, h, w) maps, "
                f"got {tuple(out.shape)}"
            )
        return out if target is None else select_maps(out, target)

    def masks(self, images: Tensor) -> Tensor:
        """Return the class masks ``sigmoid(forward(images))``, ``(N, num_classes, H, W)``."""
        return self(images).sigmoid()

    def fit(
        self,
        classifier: nn.Module,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        config: ExplainerHyperparameters | None = None,
        **options: Any,
    ) -> FitResult:
        """Train the explainer against a frozen classifier; see `.training.fit_explainer`.

        Args:
            classifier: The model to explain (kept frozen, in eval mode, restored afterwards).
            train_loader: Batches of dicts with ``"image"`` and ``"label"`` (like
                [`ctc_plugin.datasets.ShapesDataset`][ctc_plugin.datasets.ShapesDataset] items) or
                ``(image, label)`` tuples.
            val_loader: Optional batches for early stopping (the training loss otherwise).
            config: The objective's hyper-parameters, an
                [`ExplainerHyperparameters`][ctc_plugin.explainer.presets.ExplainerHyperparameters]
                (``None``: the published defaults; ``get_preset(name)`` for another published
                setting).
            **options: The training loop's keyword options of
                [`fit_explainer`][ctc_plugin.explainer.training.fit_explainer] (``epochs``,
                ``patience``, ``seed``, ``checkpoint``, ``resume``, ``baseline``, ...).

        Returns:
            The per-epoch history and where training stopped.
        """
        from ctc_plugin.explainer.presets import ExplainerHyperparameters
        from ctc_plugin.explainer.training import fit_explainer

        hyperparameters = ExplainerHyperparameters() if config is None else config
        return fit_explainer(self, classifier, train_loader, val_loader, hyperparameters, **options)

    def config(self) -> dict[str, Any]:
        """Return what [`load`][ctc_plugin.Explainer.load] needs to rebuild this explainer.

        ``num_classes``, ``in_channels``, ``input_scale``, the backbone's registry name as
        ``backbone`` and the backbone's settings (its
        [`BackboneRecipe`][ctc_plugin.explainer.backbones.BackboneRecipe]).

        Raises:
            ValueError: If the backbone was not built by
                [`build_backbone`][ctc_plugin.explainer.backbones.build_backbone] (there is no
                recipe to store; save its ``state_dict`` yourself).
        """
        from ctc_plugin.explainer.backbones import recipe_of

        recipe = recipe_of(self.backbone)
        if recipe is None:
            raise ValueError(
                "an explainer with a custom nn.Module backbone has no saveable config: build a "
                "named backbone with ctc_plugin.explainer.backbones.build_backbone, or save "
                "its state_dict yourself"
            )
        settings = {k: v for k, v in recipe.settings.items() if k != "in_channels"}
        return {
            "num_classes": self.num_classes,
            "backbone": recipe.name,
            "in_channels": self.in_channels,
            "input_scale": self.input_scale,
            **settings,
        }

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the configuration, the weights and optional metadata to ``path``.

        A file written into the shipped weights folder (``ctc_plugin/zoo/weights``) gets its
        entry in the weights manifest updated, so loading it later passes the digest check.
        The file is written under a temporary name beside ``path`` and renamed into place, so a
        save that fails (or is killed) leaves the previous file at ``path`` as it was.

        Args:
            path: File to write (parent folders are created).
            metadata: Plain data stored alongside, added to the explainer's own
                [`metadata`][ctc_plugin.Explainer] (what its file or ``fit`` recorded; a key
                given here replaces it there), which then holds what was written. E.g. how
                the explainer was trained: ``str``,
                ``int``, ``float``, ``bool``, ``None``, tensors, and lists, tuples and
                ``str``-keyed dicts of them. NumPy scalars and arrays are stored as Python
                numbers and lists.

        Returns:
            The path written.

        Raises:
            TypeError: If ``metadata`` holds anything else (the message names the key and
                its type); nothing is written then.
        """
        path = Path(path)
        written = plain_metadata({**self.metadata, **(metadata or {})})
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        payload = {
            "format": FILE_FORMAT,
            "config": self.config(),
            "state_dict": state,
            "metadata": written,
        }
        write_torch_file(path, payload)
        self.metadata = written
        record_in_manifest(path)  # a file written into the shipped weights folder stays listed
        return path

    @classmethod
    def load(cls, path: str | Path, classifier: nn.Module | None = None) -> Explainer:
        """Rebuild an explainer written by [`save`][ctc_plugin.Explainer.save] (data-only loading).

        The file is read by [`ctc_plugin.files.read_data_file`][ctc_plugin.files.read_data_file] (a
        shipped file is checked against the weights manifest; an empty, truncated, corrupt or
        foreign file is one clear error naming the path and what is wrong).

        Args:
            path: The file.
            classifier: For files of a classifier backbone: a model of the explained
                classifier's architecture (its weights do not matter, the file holds the
                trained copy's). Ignored by other files.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is unreadable, is not an explainer written by
                [`save`][ctc_plugin.Explainer.save], lacks entries (the message names them), holds a
                state dict that does not fit its config, or needs a classifier and none was given.
        """
        payload = read_data_file(path, "explainer file")
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ValueError(
                f"{str(path)!r} is not an explainer file written by Explainer.save "
                f"(expected format {FILE_FORMAT!r}){_what_file(payload)}"
            )
        missing = [k for k in ("config", "state_dict") if not isinstance(payload.get(k), dict)]
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(
                f"explainer file {str(path)!r}: its metadata is no dict (it holds "
                f"{type(metadata).__name__}); write it again with Explainer.save"
            )
        config = {} if "config" in missing else dict(payload["config"])
        if "config" not in missing:
            missing += [f"config[{k!r}]" for k in ("num_classes", "backbone") if k not in config]
        if missing:
            raise ValueError(
                f"explainer file {str(path)!r} is incomplete: it lacks {', '.join(missing)}; "
                "write it again with Explainer.save (or the command that trained it)"
            )
        try:
            mismatch = _state_dict_mismatch(cls, config, classifier, payload["state_dict"])
            explainer = None if mismatch else cls._from_config(config, classifier)
        except TypeError as error:
            raise ValueError(
                f"explainer file {str(path)!r} has a config this version cannot build ({error}); "
                "write it again with Explainer.save"
            ) from error
        except ValueError as error:
            hint = _classifier_hint(config, classifier, payload)
            raise ValueError(f"explainer file {str(path)!r}: {error}{hint}") from error
        try:
            if explainer is None:  # refused by the shapes, before the real build
                raise RuntimeError(f"Error(s) in loading state_dict:\n{mismatch}")
            explainer.load_state_dict(payload["state_dict"])
        except RuntimeError as error:
            detail = " ".join(line.strip() for line in str(error).splitlines()[1:4])
            hint = _classifier_hint(config, classifier, payload, str(error))
            raise ValueError(
                f"the state dict in explainer file {str(path)!r} does not fit its config "
                f"{config}{hint}: {detail or error}"
            ) from error
        explainer.metadata = dict(metadata)
        return explainer.eval()

    @classmethod
    def _from_config(cls, config: dict[str, Any], classifier: nn.Module | None) -> Explainer:
        """Build an untrained explainer from a stored config (old files' settings translated)."""
        from ctc_plugin.explainer.backbones import build_backbone, settings_from_file, settings_of

        stored = dict(config)
        name, num_classes = stored.pop("backbone"), stored.pop("num_classes")
        input_scale = stored.pop("input_scale", 1.0)
        in_channels = stored.pop("in_channels", 3)
        settings = settings_from_file(name, stored)
        takes = settings_of(name)
        unknown = sorted(set(settings) - set(takes))
        if unknown:  # a TypeError: load reports a config this version cannot build
            raise TypeError(f"backbone {name!r} takes no setting {', '.join(unknown)}")
        if "in_channels" in takes:
            settings["in_channels"] = in_channels
        if "classifier" in takes:
            if classifier is None:
                raise ValueError(
                    "it holds a copy of its classifier: pass classifier=, a model of the "
                    "explained architecture (an instance of your classifier's class, whose "
                    "weights do not matter: the file holds them; for a zoo model "
                    "ctc_plugin.zoo.build(family, num_classes))"
                )
            settings["classifier"] = classifier
        backbone = build_backbone(name, num_classes, **settings)
        return cls(backbone, num_classes, in_channels=in_channels, input_scale=input_scale)

    def hyperparameters(self) -> ExplainerHyperparameters | None:
        """Return the hyper-parameters it was trained with (by ``fit``, or read from its file).

        ``None`` where unknown: an untrained explainer, a distilled one, a file without them.
        """
        from ctc_plugin.explainer.presets import ExplainerHyperparameters

        values = getattr(self, "metadata", {}).get("hyperparameters")
        return ExplainerHyperparameters(**values) if values else None


def _classifier_hint(
    config: dict[str, Any],
    classifier: nn.Module | None,
    payload: dict[str, Any],
    mismatch: str | None = None,
) -> str:
    """What to do when a file's classifier copy does not fit the ``classifier=`` given.

    Empty for files without a classifier copy (the classifier plays no part in them), and for a
    state-dict ``mismatch`` that names no tensor of the backbone (a damaged ``image_size``: the
    classifier is not what is wrong).
    """
    from ctc_plugin.explainer.backbones import settings_of

    try:
        takes_classifier = "classifier" in settings_of(config.get("backbone"))
    except (KeyError, ValueError, TypeError):
        return ""
    if classifier is None or not takes_classifier:
        return ""
    if mismatch is not None and "backbone." not in mismatch:
        return ""
    metadata = payload.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    model, classes = metadata.get("model"), config.get("num_classes")
    trained = f" ({model})" if isinstance(model, str) else ""
    if isinstance(model, str) and "split" in metadata:  # trained on a zoo split: a zoo model
        trained = f" ({model}, e.g. ctc_plugin.zoo.build({model!r}, {classes}))"
    return (
        f"; the file holds a copy of the classifier it was trained against, which the "
        f"classifier= given ({type(classifier).__name__}) does not match: pass a model of that "
        f"architecture and class count{trained}"
    )


def _what_file(payload: Any) -> str:
    """What to give instead of a file that is no explainer file: empty unless it is known.

    A training checkpoint of [`fit`][ctc_plugin.Explainer.fit] is the file given most often.
    """
    from ctc_plugin.explainer.checkpoints import CHECKPOINT_FORMAT

    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        return ""
    return (
        "; it is a training checkpoint of fit: continue training from it (resume=, the command "
        "line's --resume), or load the explainer that training saved with Explainer.save (the "
        "command line's --out)"
    )


#: Types [`Explainer.load`][ctc_plugin.Explainer.load] reads back as metadata values.
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def plain_metadata(value: Any, key: str = "metadata") -> Any:
    """``value`` as plain data that [`Explainer.load`][ctc_plugin.Explainer.load] reads back.

    NumPy scalars become Python numbers and NumPy arrays lists; tensors are detached and
    moved to the CPU; lists, tuples and ``str``-keyed dicts are converted item by item.

    Examples:
        >>> import numpy as np
        >>> plain_metadata({"lr": np.float64(0.5), "sizes": (np.int64(2), 3)})
        {'lr': 0.5, 'sizes': (2, 3)}

    Raises:
        TypeError: For anything else, naming where it is (``metadata['a'][0]``) and its type.
    """
    import numpy as np

    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        items = [plain_metadata(item, f"{key}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(
                f"{key} has the key {bad[0]!r} of type {type(bad[0]).__name__}; metadata keys "
                "must be strings"
            )
        return {k: plain_metadata(v, f"{key}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"{key} is a {type(value).__module__}.{type(value).__qualname__}, which Explainer.load "
        "cannot read back; store plain data (str, int, float, bool, None, tensors, and lists, "
        "tuples and dicts of them), e.g. str(value) for a path"
    )


def _state_dict_mismatch(
    cls: type[Explainer],
    config: dict[str, Any],
    classifier: nn.Module | None,
    state_dict: dict[str, Any],
) -> str | None:
    """How a config's network differs from the file's state dict, found before building it.

    The network is built on the meta device first (no memory), so a config that would build a
    huge network (``num_classes`` of twenty million in a file of a few kilobytes) is refused by
    its shapes instead of allocating them. ``None`` where they fit, or where the builder cannot
    run on the meta device (the real build and ``load_state_dict`` then decide).

    Raises:
        TypeError: A config entry that ``save`` never writes (an object argument such as
            ``weights``, which would have the builder open another file).
    """
    from ctc_plugin.explainer.backbones import OBJECT_ARGUMENTS

    written = sorted(key for key in config if key in OBJECT_ARGUMENTS)
    if written:
        raise TypeError(
            f"its config holds {', '.join(written)}, which Explainer.save never writes (the "
            "file holds the weights itself)"
        )
    try:
        with torch.device("meta"):
            probe = cls._from_config(config, classifier)
    except (NotImplementedError, RuntimeError):
        return None
    wanted = {key: tuple(value.shape) for key, value in probe.state_dict().items()}
    given = {
        key: tuple(value.shape) for key, value in state_dict.items() if hasattr(value, "shape")
    }
    # what files of older versions lack and loading leaves at its unknown value
    optional = {key for key in wanted if key.rsplit(".", 1)[-1] in cls.ADDED_STATE}
    differ = sorted(
        key
        for key in wanted.keys() | given.keys()
        if wanted.get(key) != given.get(key) and not (key in optional and key not in given)
    )
    if not differ:
        return None

    def difference(key: str) -> str:
        if key not in given and key in state_dict:
            kind = type(state_dict[key]).__name__
            return f"{key} is no tensor of {wanted[key]} (it holds {kind})"
        if key not in given:
            return f"missing {key} {wanted[key]}"
        if key not in wanted:
            return f"unexpected {key} {given[key]}"
        return f"size mismatch for {key}: {given[key]} in the file, {wanted[key]} in the config"

    shown = "; ".join(difference(key) for key in differ[:3])
    return shown + (f"; {len(differ) - 3} more" if len(differ) > 3 else "")
