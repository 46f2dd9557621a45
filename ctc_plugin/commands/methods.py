"""The methods ``ctc-plugin explain --method`` runs, each a real library call.

Every method explains one image batch ``(1, 3, H, W)`` of pixels in [0, 1] for one target
class and returns an ``(H, W)`` map; the segment scores are that map's mean over each segment
(`ctc_plugin.features.segment_means`). For the feature methods (CTC, Captum's
``FeatureAblation`` and ``Lime``), whose attributions repeat each segment's score on its
pixels, these are the methods' own scores; for the per-pixel methods (Integrative CAM, the
Explainer, Grad-CAM) they rank the segments by the map's average.

How each method is called (its library call and settings) is written once, in
`ctc_plugin.method_calls`, which the benchmark's methods call too; the runners here pass the
command's options and turn refusals into the command's advice.

This module imports nothing heavy at the top: the names and help texts are read while the
command line is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ctc_plugin import method_calls
from ctc_plugin.ctc.modes import DEFAULT_BIAS_SHARING
from ctc_plugin.method_calls import PERTURBATIONS_PER_EVAL, SAMPLES
from ctc_plugin.wording import caller_stacklevel, counted

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ctc_plugin.method_calls import CaptumFeatureMethod

#: ``--method`` names and what each runs (the help text of the option).
METHODS: dict[str, str] = {
    "ctc": "CTC (ctc_plugin.CTC): segment scores from scaled partial forward passes",
    "integrative-cam": "Integrative CAM (ctc_plugin.IntegrativeCAM): a per-pixel map",
    "explainer": "a trained Explainer (--explainer FILE; without it, the one shipped with a zoo "
    "model): a mask in one pass",
    "feature-ablation": "Captum FeatureAblation: each segment replaced by 0 (black)",
    "lime": "Captum Lime over the same segments (seeded: the same run gives the same scores)",
    "gradcam": (
        "Grad-CAM (Captum LayerGradCam) on the last convolutional feature map with more than "
        "one position (the title names it); refused for vision transformers (use "
        "integrative-cam)"
    ),
}

#: Methods whose scores are their own per-segment scores (the others: map means per segment).
SEGMENT_METHODS = ("ctc", "feature-ablation", "lime")

#: Methods that only call the model (the others follow or hook its layers), so that they also
#: explain a TorchScript model.
CALL_ONLY_METHODS = ("feature-ablation", "lime")

#: Methods that send ``--perturbations-per-eval`` copies of the image per forward pass (CTC
#: too, but for its proportional sharing: `reads_perturbations_per_eval`).
CHUNKED_METHODS = ("feature-ablation", "lime")

#: Seed of Lime's random samples (the benchmark's: `ctc_plugin.method_calls.SAMPLING_SEED`).
LIME_SEED = method_calls.SAMPLING_SEED


def reads_perturbations_per_eval(name: str, bias_sharing: str) -> bool:
    """Whether the method ``name`` reads ``--perturbations-per-eval`` under ``bias_sharing``.

    FeatureAblation and Lime do, and CTC but for its proportional sharing, which divides each
    bias among all the segments and so sends every segment's copy in one pass.
    """
    if name == "ctc":
        return bias_sharing != "proportional"
    return name in CHUNKED_METHODS


class MethodError(Exception):
    """A method cannot explain this model or input; the message says why and what to use."""


@dataclass(frozen=True)
class Request:
    """What every method gets.

    Attributes:
        model: The classifier, in eval mode, taking pixels in [0, 1] (normalisation included).
        pixels: ``(1, 3, H, W)`` image on the model's device.
        target: The class to explain.
        feature_mask: ``(1, 1, H, W)`` segment ids ``0..K-1`` on the model's device.
        bias_sharing: CTC's bias sharing.
        lime_samples: Lime's samples.
        perturbations_per_eval: Copies per forward pass of CTC, FeatureAblation and Lime.
        show_progress: Show the methods' progress bars.
        explainer: The trained Explainer of ``explainer`` (``--explainer``, or a zoo model's).
    """

    model: nn.Module
    pixels: Tensor
    target: int
    feature_mask: Tensor
    bias_sharing: str = DEFAULT_BIAS_SHARING
    lime_samples: int = SAMPLES
    perturbations_per_eval: int = PERTURBATIONS_PER_EVAL
    show_progress: bool = True
    explainer: nn.Module | None = None

    @classmethod
    def with_options_of(
        cls,
        options: Any,
        *,
        model: nn.Module,
        pixels: Tensor,
        target: int,
        feature_mask: Tensor,
        show_progress: bool,
        explainer: nn.Module | None,
    ) -> Request:
        """A request whose method options are read from ``options``.

        Args:
            options: Anything with ``bias_sharing``, ``lime_samples`` and
                ``perturbations_per_eval``: the ``explain`` command's arguments or a data-set
                run's config.
            model: The classifier (the attribute of that name).
            pixels: The image (the attribute of that name).
            target: The class to explain.
            feature_mask: The image's segment ids.
            show_progress: Show the methods' progress bars.
            explainer: The trained Explainer, or None.
        """
        return cls(
            model=model,
            pixels=pixels,
            target=target,
            feature_mask=feature_mask,
            bias_sharing=options.bias_sharing,
            lime_samples=options.lime_samples,
            perturbations_per_eval=options.perturbations_per_eval,
            show_progress=show_progress,
            explainer=explainer,
        )


@dataclass(frozen=True)
class Result:
    """One method's explanation of one image.

    Attributes:
        name: The ``--method`` name.
        title: What figures and tables call it, e.g. ``"CTC (reference)"``.
        attribution: ``(H, W)`` float32 map on the CPU.
        scores: ``(K,)`` float64 score of segments ``0..K-1`` (the means of the map in its own
            type: a float64 model's CTC scores add up to its logit to float64 rounding).
        per_segment: True when the scores are the method's own segment scores, False when
            they are the means of a per-pixel map.
    """

    name: str
    title: str
    attribution: Tensor
    scores: Tensor
    per_segment: bool


def run_method(name: str, request: Request) -> Result:
    """Run the method ``name`` (a key of `METHODS`) on ``request``.

    Raises:
        MethodError: The method cannot explain this model (e.g. Grad-CAM on a transformer).
        ValueError: Inputs the method refuses (the library's message).
    """
    import torch

    from ctc_plugin.features.partition import segment_means

    title, attribution = _RUNNERS[name](request)
    flat = attribution.detach().cpu()
    if flat.dtype != torch.float64:  # a float64 model's map stays so for its scores' means
        flat = flat.float()
    while flat.dim() > 2:
        flat = flat[0] if flat.shape[0] == 1 else flat.sum(0)
    ids, scores = segment_means(flat, request.feature_mask.cpu())
    count = int(request.feature_mask.max()) + 1
    full = scores.new_zeros(count).index_copy_(0, ids, scores)
    return Result(name, title, flat.float(), full, name in SEGMENT_METHODS)


def _ctc(request: Request) -> tuple[str, Tensor]:
    chunked = reads_perturbations_per_eval("ctc", request.bias_sharing)
    attributions = method_calls.ctc(
        request.model,
        request.pixels,
        request.target,
        request.feature_mask,
        bias_sharing=request.bias_sharing,
        perturbations_per_eval=request.perturbations_per_eval if chunked else None,
        show_progress=request.show_progress,
    )
    return f"CTC ({request.bias_sharing})", attributions[:, :1]


def _python_only(method: str, why: str, runs: str, in_python: str, fix: str = "") -> MethodError:
    """The refusal of ``method`` on a model that only an argument the command lacks explains.

    Args:
        method: The ``--method`` name.
        why: What stops the method, ending in the option the command does not have.
        runs: The methods that do take the model.
        in_python: How to run the method from Python with that argument.
        fix: A change to the model that lets the command run the method (``""``: none).
    """
    change = f"{fix}, " if fix else ""
    return MethodError(
        f"{why}: {change}leave {method} out of --method (explain-dataset: --methods; {runs} "
        f"run), or call {in_python}"
    )


def _blocks_unknown(method: str, in_python: str) -> MethodError:
    """The refusal of ``method`` on a transformer whose blocks are of no known type.

    ``in_python`` ends the message: how to run the method from Python with the blocks named.
    """
    return _python_only(
        method,
        f"{method} cannot find this transformer's blocks, and the command has no option to name "
        "them",
        "ctc and feature-ablation",
        in_python,
    )


def _integrative_cam(request: Request) -> tuple[str, Tensor]:
    import warnings

    from ctc_plugin.cam.integrative import NoFeatureMapsError, ZeroMapWarning
    from ctc_plugin.cam.layers import RUNNING_STATISTICS, BatchNormBiasError
    from ctc_plugin.cam.transformers import UnknownBlocksError

    try:
        with warnings.catch_warnings():  # said once for the run: warn_of_empty_results
            warnings.simplefilter("ignore", ZeroMapWarning)
            maps = method_calls.integrative_cam(request.model, request.pixels, request.target)
    except NoFeatureMapsError as error:
        raise MethodError(
            "integrative-cam fuses the maps of a model's convolutions (or of a known "
            "transformer's blocks), and this model runs none: leave integrative-cam out of "
            "--method (explain-dataset: --methods); feature-ablation and lime take any model, "
            "and ctc most"
        ) from error
    except UnknownBlocksError as error:
        raise _blocks_unknown(
            "integrative-cam",
            "ctc_plugin.IntegrativeCAM from Python with the blocks and a reshape of their "
            "tokens (docs: Integrative CAM decisions)",
        ) from error
    except BatchNormBiasError as error:  # its advice, bias=False, is no option of the command
        raise _python_only(
            "integrative-cam",
            f"{error.reason}, and the command has no option to leave Integrative CAM's bias "
            "terms out",
            "gradcam, feature-ablation and lime",
            "ctc_plugin.IntegrativeCAM(model, bias=False) from Python",
            fix=RUNNING_STATISTICS,
        ) from error
    return "Integrative CAM", maps


def _explainer(request: Request) -> tuple[str, Tensor]:
    """The Explainer's masks.

    Whether the explainer was trained for this model's weights is checked once, where the
    command loads it ([`explainer_for`][ctc_plugin.commands.explain_setup.explainer_for]), in
    the command's terms, not on every image.
    """
    if request.explainer is None:  # the command loads it; a direct call must pass one
        raise MethodError("the explainer method needs a trained Explainer")
    explainer = request.explainer.to(request.pixels.device)
    maps = method_calls.explainer_maps(
        request.model, explainer, request.pixels, request.target, check_classifier=False
    )
    return "Explainer", maps[:, :1]


def _feature_ablation(request: Request) -> tuple[str, Tensor]:
    return "FeatureAblation", _captum_features(method_calls.FEATURE_ABLATION, request)


def _captum_features(call: CaptumFeatureMethod, request: Request) -> Tensor:
    """``call``'s ``(1, 1, H, W)`` map of the request's image and segments.

    With the request's progress bar and ``--perturbations-per-eval`` copies per pass (one for
    a model whose BatchNorm keeps no running statistics: `CaptumFeatureMethod.attribute`).
    """
    chunked = call.but(perturbations_per_eval=request.perturbations_per_eval)
    attributions = chunked.attribute(
        request.model,
        request.pixels,
        request.target,
        request.feature_mask,
        show_progress=request.show_progress,
    )
    return attributions[:, :1]


def _lime(request: Request) -> tuple[str, Tensor]:
    lime = method_calls.LIME.but(n_samples=request.lime_samples)
    return f"Lime ({counted(request.lime_samples, 'sample')})", _captum_features(lime, request)


#: The methods whose results can say nothing of an image (`warn_of_empty_results`): Lime's
#: scores all 0, Integrative CAM's map zero everywhere.
EMPTY_RESULT_METHODS = ("lime", "integrative-cam")


def warn_of_empty_results(
    zero: Mapping[tuple[str, str], int], images: int, lime_samples: int
) -> None:
    """Warn once for a command's run of each method whose results say nothing on some images.

    Lime's scores all 0 (its Lasso kept no segment), and Integrative CAM's map zero everywhere
    (its segment means all 0). A run of many images is told once per method, with how many and
    the first, not once per image: the warnings of ``explain`` and ``explain-dataset``.

    Args:
        zero: ``{(image, method): segments}`` of the results that are all 0, in the run's
            order (``explain-dataset`` reads them from its table:
            [`all_zero_rows`][ctc_plugin.runs.results.all_zero_rows]); empty: no warning.
        images: How many images the run explained.
        lime_samples: ``--lime-samples``.
    """
    import warnings

    from ctc_plugin.cam.integrative import ZeroMapWarning

    for method in EMPTY_RESULT_METHODS:
        said = {image: segments for (image, name), segments in zero.items() if name == method}
        if said:
            warnings.warn(
                _says_nothing(method, said, images, lime_samples),
                ZeroMapWarning if method == "integrative-cam" else UserWarning,
                stacklevel=caller_stacklevel(),
            )


def _says_nothing(method: str, zero: dict[str, int], images: int, lime_samples: int) -> str:
    """The warning of `warn_of_empty_results` for ``method``, zero on the images ``zero``.

    ``zero`` maps each such image to its number of segments.
    """
    from ctc_plugin.cam.integrative import ZERO_MAP_REASON

    first = next(iter(zero))
    where = "" if images == 1 else f" on {len(zero)} of {images} images (the first: {first})"
    nothing = f"these scores say nothing of the {'image' if len(zero) == 1 else 'images'}"
    if method == "integrative-cam":
        return (
            f"integrative-cam: the map is zero everywhere{where}: {ZERO_MAP_REASON} (on a vision "
            "transformer, the Grad-CAM++ weights of its signed token maps can cancel, and a "
            f"last block whose patch tokens reach no score has none); {nothing}: use ctc or "
            "feature-ablation, or from Python ctc_plugin.IntegrativeCAM with phi='identity' "
            "(Grad-CAM weights) or the layers to explain, layers=[...] (docs: Integrative CAM "
            "decisions)"
        )
    segments = max(zero.values())
    few = (
        f"; {counted(lime_samples, 'sample')} for {segments} segments are too few to "
        f"fit one score each: give --lime-samples above {segments}"
        if lime_samples <= segments
        else ""
    )
    return (
        f"lime: every segment's score is 0{where}: Captum's Lime fits a Lasso (alpha 0.01) to "
        "the model's scores on the perturbed images, and it kept no segment (the score moved "
        f"too little between them){few}; {nothing}: use ctc or feature-ablation"
    )


def _gradcam(request: Request) -> tuple[str, Tensor]:
    from ctc_plugin.cam.transformers import (
        NoSpatialMapError,
        UnknownBlocksError,
        last_spatial_layer,
        transformer_stages,
    )
    from ctc_plugin.module_paths import module_path

    if transformer_stages(request.model):
        raise MethodError(
            "the command's Grad-CAM is Captum's LayerGradCam, which explains (N, C, H, W) "
            "maps, and this model's last map is its transformer blocks' tokens, which it "
            "cannot put on the patch grid; use integrative-cam, which reads the blocks, or "
            "Grad-CAM from Python: pytorch-grad-cam with ctc_plugin.cam.grad_cam_layer (as the "
            "benchmark does)"
        )
    try:
        layer = last_spatial_layer(request.model, request.pixels)
    except UnknownBlocksError as error:
        raise _blocks_unknown(
            "gradcam",
            "pytorch-grad-cam from Python with target_layers=[the last block's first norm] "
            "and reshape_transform=ctc_plugin.cam.tokens_to_grid "
            "(docs: CTC on a vision transformer)",
        ) from error
    except NoSpatialMapError as error:
        raise MethodError(
            f"{error}: Grad-CAM weights a convolutional map, and this model has none; use "
            "feature-ablation or lime (integrative-cam too where the model is a transformer "
            "whose blocks it knows; it needs convolutions otherwise)"
        ) from error
    name = module_path(request.model, layer)  # the user's path, not the wrapper's 1.xxx
    maps = method_calls.captum_grad_cam(request.model, request.pixels, request.target, layer)
    return f"Grad-CAM ({name})", maps


_RUNNERS: dict[str, Callable[[Request], tuple[str, Tensor]]] = {
    "ctc": _ctc,
    "integrative-cam": _integrative_cam,
    "explainer": _explainer,
    "feature-ablation": _feature_ablation,
    "lime": _lime,
    "gradcam": _gradcam,
}


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out.

    Python's, torch's CPU or GPU allocator, or the system's: an ``OSError`` ENOMEM, as from
    CTC's ``mmap`` of its workspace.
    """
    import errno

    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(error, OSError):
        return error.errno == errno.ENOMEM
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def memory_advice(name: str, request: Request) -> str:
    """The options that make the method ``name`` need less memory on ``request``'s image."""
    height, width = request.pixels.shape[-2:]
    if name not in SEGMENT_METHODS:  # one pass of the image, whatever its segments
        return f"the image is {width}x{height}: give a smaller --resize"
    segments = int(request.feature_mask.max()) + 1
    advice = (
        f"the {width}x{height} image has {segments} segments: give fewer --segments or a "
        "smaller --resize"
    )
    if not reads_perturbations_per_eval(name, request.bias_sharing):  # CTC, proportional
        return advice + (
            ", or --bias-sharing reference with a small --perturbations-per-eval (proportional "
            "sharing passes a copy of the image per segment at once)"
        )
    return advice + ", or a smaller --perturbations-per-eval"  # they pass copies of the image


def try_methods(
    names: list[str] | tuple[str, ...], request: Request, model: str, option: str, where: str = ""
) -> None:
    """Run each method once on ``request``'s image cut in two halves, to refuse early.

    A command runs it before its real work, so that a method that cannot explain the model
    (Grad-CAM on a vision transformer, CTC on a model that ends in a softmax) stops it before a
    long run of the other methods, or before a run folder is set up. The halves make the trial
    cheap (two copies of the image, no segmenter), and Lime takes four samples. Where a method
    refuses the model, the others are tried all the same, and the message names those that
    refuse it too and says how to run those that can.

    Raises:
        CLIError: As `run_for_command`.
    """
    import dataclasses

    import torch

    from ctc_plugin.commands import CLIError
    from ctc_plugin.ctc.errors import UnsupportedOperationError

    height, width = request.pixels.shape[-2:]
    halves = (torch.arange(width, device=request.pixels.device) >= width // 2).long()
    trial = dataclasses.replace(
        request,
        feature_mask=halves.expand(1, 1, height, width),
        lime_samples=min(request.lime_samples, 4),
        show_progress=False,
    )
    refusals: list[tuple[str, CLIError]] = []
    with torch.random.fork_rng(devices=[]):
        for name in names:
            try:
                run_for_command(name, trial, model, option, where)
            except CLIError as error:
                if not isinstance(error.__cause__, UnsupportedOperationError | MethodError):
                    raise
                refusals.append((name, error))
    if not refusals:
        return
    error, refused = refusals[0][1], [name for name, _ in refusals]
    message = str(error)
    if len(refused) > 1:
        message += f"; {', '.join(refused[1:])} refused it too (give each alone to see why)"
    working = [name for name in names if name not in refused]
    if working:
        message += f"; {', '.join(working)} can: give {option} {' '.join(working)}"
    raise CLIError(message) from error.__cause__


def run_for_command(
    name: str, request: Request, model: str, option: str, where: str = ""
) -> Result:
    """`run_method` for a command: refusals and running out of memory as one-line errors.

    Args:
        name: The method.
        request: What to explain.
        model: ``--model`` as given, for the refusals of the model.
        option: The option that names the method (``--method``, ``--methods``).
        where: The image's name, for a command that explains many (``""``: none): every
            refusal but the method's own of the model (`MethodError`) names it, CTC's of an
            operation too (a model may run it on some images only).

    Raises:
        CLIError: For a model the method cannot explain, inputs it refuses, and memory that
            runs out (saying which options need less).
    """
    from ctc_plugin.commands import CLIError
    from ctc_plugin.ctc.errors import UnsupportedOperationError

    image = f"{where}: " if where else ""
    prefix = f"{option} {name}: {image}"
    try:
        return run_method(name, request)
    except UnsupportedOperationError as error:
        raise CLIError(f"--model {model}: {image}{_unsupported(error)}") from error
    except MethodError as error:  # the method and the model: no image is to blame
        raise CLIError(f"{option} {name}: {error}") from error
    except ValueError as error:
        raise CLIError(f"{prefix}{error}") from error
    except (RuntimeError, MemoryError, OSError) as error:
        if not is_out_of_memory(error):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        advice = memory_advice(name, request)
        raise CLIError(f"{prefix}out of memory ({first}); {advice}") from error


def _unsupported(error: Any) -> str:
    """An `UnsupportedOperationError` for the command line, in one short line.

    The operation and why, without the table of supported operations that ends the Python
    message, and the methods that take any model; a model that ends in a softmax in one
    sentence.
    """
    where = f" in {error.module}" if error.module else ""
    any_model = "feature-ablation and lime take any model"
    if "statistics of the batch" in error.reason:  # the model's own batch statistics
        any_model = "feature-ablation and lime explain it with one perturbed image per pass"
    elif "at random" in error.reason:  # a random draw: every method's scores would be random
        return error.headline
    if error.at_output and error.operation.endswith("softmax"):
        return (
            f"the model's output comes out of {error.operation}{where} (probabilities), and "
            "CTC explains the logits before it: return the logits from the model (leave the "
            f"final softmax out); {any_model}"
        )
    return f"{error.headline}; {any_model} (the operations CTC supports: docs, How CTC works)"
