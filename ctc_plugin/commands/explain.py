"""``ctc-plugin explain`` and ``ctc-plugin demo``: segment images, score the segments, compare.

``explain IMAGE [IMAGE ...] --method M [M ...]`` reads each image keeping its aspect ratio
([`ctc_plugin.images`][ctc_plugin.images]: the model's own resize, centre crop and normalisation),
segments it, explains the target class with every method asked for (`ctc_plugin.commands.methods`),
prints the segments ranked per method and writes one figure, a row per image and a panel per method;
``--save`` also writes the numbers (``.npz``) and the rankings (``.json``). With no IMAGE it
explains a bundled synthetic sample with the shipped ResNet-style model; ``demo`` does the same and
also draws the sample's ground-truth evidence.

Only the standard library is imported at the top: ``ctc-plugin --help`` must not wait for
torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import CLIError, add_threads_option, torch_threads
from ctc_plugin.commands.arguments import (
    add_preprocessing_options,
    check_outputs_spare_inputs,
    input_file,
    output_file,
    positive_int,
)
from ctc_plugin.commands.explain_setup import (
    DEFAULT_MODEL,
    add_method_options,
    add_model_options,
    add_segmenter_options,
    explainer_for,
    explainer_size_refusal,
    make_segmenter,
    method_name,
    model_for_split,
    preprocessing_for,
    resolve_device,
    sam_checkpoint_option,
    segment_image,
)
from ctc_plugin.commands.methods import METHODS
from ctc_plugin.commands.model_checks import (
    check_finite_scores,
    check_input_channels,
    check_torchscript,
    check_weights_present,
    choose_precision,
    fit_class_names,
    is_own_size,
    loaded_dtype,
    model_logits,
    model_pixels,
    output_function,
    target_class,
)
from ctc_plugin.commands.models import LoadedModel, is_zoo_spec, load_model
from ctc_plugin.wording import counted

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ctc_plugin.commands.methods import Request, Result
    from ctc_plugin.images import ImagePreprocessing, PreparedImage

#: Figure files ``--out`` writes, in the format its suffix names (matplotlib writes each).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


@dataclass
class Explained:
    """One image, explained by every method (``feature_mask`` set once it is segmented)."""

    path: Path
    image: PreparedImage
    logits: torch.Tensor
    target: int
    feature_mask: torch.Tensor | None = None
    results: list[Result] = field(default_factory=list)
    evidence: torch.Tensor | None = None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``explain`` and ``demo`` subcommands."""
    from ctc_plugin.datasets.splits import SPLITS

    explain = subparsers.add_parser(
        "explain",
        usage="%(prog)s [IMAGE ...] [--method METHOD [METHOD ...]] [options]",
        help="explain images: segments ranked by each method's score, figure and data",
        description="Read each IMAGE keeping its aspect ratio (the model's own resize, centre "
        "crop and normalisation), segment it, explain the target class with every --method, "
        "print the segments ranked per method and write one figure (a row per image, a panel "
        "per method); --save writes the scores, the segments and the attributions (.npz) and "
        "the rankings (.json). With no IMAGE: a bundled synthetic sample and the shipped "
        "ResNet-style model.",
    )
    explain.add_argument(
        "images",
        nargs="*",
        type=image_file,
        metavar="IMAGE",
        help="image files (PNG, JPEG, WebP, TIFF, ...; the EXIF orientation is applied, and "
        "palette, grayscale, 16-bit and CMYK images are read as RGB, transparent pixels "
        "composited on white; a file named twice is explained once); default: a bundled "
        "synthetic sample",
    )
    _add_options(explain, default_out="explanation.png")
    explain.set_defaults(func=run_explain)

    demo = subparsers.add_parser(
        "demo",
        help="explain a bundled synthetic sample and draw its ground-truth evidence",
        description="Explain a bundled synthetic sample (a shapes or composite image the zoo "
        "models were trained on, nothing downloaded) with the chosen methods, and draw the "
        "explanations beside the sample's ground-truth evidence: the pixels that decide its "
        "class. Takes the options of explain.",
    )
    demo.add_argument(
        "--split",
        choices=tuple(SPLITS),
        default=None,
        help="which bundled sample (and which zoo weights) to use (default: the split a zoo "
        "--model names, e.g. resnet-composite, else shapes)",
    )
    _add_options(demo, default_out="out/demo.png")
    demo.set_defaults(func=run_demo, images=[])


def _add_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    methods = "; ".join(f"{name}: {text}" for name, text in METHODS.items())
    parser.add_argument(
        "--method",
        "--methods",  # explain-dataset's spelling
        dest="methods",
        nargs="+",
        type=method_name,
        default=["ctc"],
        metavar="METHOD",
        help=f"one or more methods, drawn side by side (default: ctc). {methods}",
    )
    add_model_options(parser, default=None)  # left out: DEFAULT_MODEL, with a note on photos
    add_preprocessing_options(parser)
    parser.add_argument(
        "--target",
        default=None,
        help="class index (negative ones count from the end) or name to explain (default: "
        "each image's predicted class)",
    )
    add_segmenter_options(parser)
    add_method_options(parser)
    parser.add_argument(
        "--top",
        type=positive_int,
        default=10,
        help="segments listed per method, and numbered in the figure up to 5 (10)",
    )
    parser.add_argument(
        "--out",
        type=figure_file,
        default=default_out,
        help=f"the figure, in the format its suffix names: {', '.join(FIGURE_SUFFIXES)} "
        f"({default_out})",
    )
    parser.add_argument(
        "--save",
        type=_npz_file,
        default=None,
        metavar="FILE.npz",
        help="also write the scores, the segments and the attribution of every method and "
        "image (.npz) and the rankings as JSON beside it (FILE.json)",
    )
    add_threads_option(
        parser, None, "torch CPU threads (default: torch's count, which OMP_NUM_THREADS sets)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ---------------------------------------------------------------------- option types
def image_file(text: str) -> Path:
    """``IMAGE``: a file to read (`input_file`); a folder is told how to give its images."""
    path = Path(text).expanduser()
    if text.strip() and path.is_dir():
        from ctc_plugin.image_files import IMAGE_SUFFIXES, holds_images

        if not holds_images(path):
            raise argparse.ArgumentTypeError(
                f"{text} is a folder, not a file, and holds no images (files ending in "
                f"{', '.join(IMAGE_SUFFIXES)}): give image files"
            )
        raise argparse.ArgumentTypeError(
            f"{text} is a folder, not a file: give the images in it "
            f"({Path(text) / '*.jpg'}), or explain every image of the folder with "
            f"ctc-plugin explain-dataset {text} --methods ... --out RUN_FOLDER"
        )
    return input_file(text)


image_file.__name__ = "image"


def figure_file(text: str) -> Path:
    """``--out``: a writable figure file whose suffix names a format of `FIGURE_SUFFIXES`."""
    path = output_file(text)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"give a figure file name ending in {', '.join(FIGURE_SUFFIXES)} (the suffix "
            f"names the format), got {text!r}"
        )
    return path


figure_file.__name__ = "figure"


def _npz_file(text: str) -> Path:
    """``--save``: a writable ``.npz`` file name."""
    path = output_file(text)
    if path.suffix.lower() != ".npz":
        raise argparse.ArgumentTypeError(f"give a file name ending in .npz, got {text!r}")
    json_path = path.with_suffix(".json")
    if json_path.is_dir():
        raise argparse.ArgumentTypeError(f"{json_path} (the ranking beside it) is a folder")
    return path


# ---------------------------------------------------------------------- the job
def explain(args: argparse.Namespace, evidence_path: Path | None = None) -> int:
    """Run the explanation described by ``args``; print the rankings, write figure and data."""
    from ctc_plugin.commands.methods import (
        EMPTY_RESULT_METHODS,
        run_for_command,
        try_methods,
        warn_of_empty_results,
    )

    args.methods = list(dict.fromkeys(args.methods))  # each once, in the order given
    paths = _distinct_files(args.images) or [
        _sample_path(getattr(args, "split", "shapes"), "image")
    ]
    check_outputs_spare_inputs("--out", args.out, "the figure", [("IMAGE", p) for p in paths])
    sam_checkpoint_option(args)
    device = resolve_device(args.device)
    loaded = load_model(args.model, args.weights)
    if loaded.note:
        print(f"note: {loaded.note}")
    check_input_channels(loaded)
    check_torchscript(loaded, args.methods)
    check_weights_present(loaded)
    note = choose_precision(loaded, device)
    if note:
        print(f"note: {note}")
    preprocessing = preprocessing_for(args, loaded)
    images = [_prepare(preprocessing, path) for path in paths]  # every file read first
    segmenter = make_segmenter(args)
    explainer = explainer_for(loaded, args, preprocessing=preprocessing)
    model = preprocessing.wrap(loaded.network).to(device).eval()
    # every image classified (its size, its target checked) and segmented before any method
    # runs on its segments
    several = len(paths) > 1  # a refusal names the image it stopped at
    explained = [
        _classified(model, loaded, args.target, path, image, device, several)
        for path, image in zip(paths, images)
    ]
    check_explainer_size(explainer, explained)
    ending = output_function(model, model_pixels(loaded, explained[0].image.pixels, device))
    args.probabilities = ending in PROBABILITY_OUTPUTS and (
        ending != "softmax" or _sum_to_one(item.logits for item in explained)
    )
    if args.probabilities:  # a multi-label head or a softmax: its outputs are no logits
        print(f"note: --model {args.model} {PROBABILITY_OUTPUTS[ending]}")
    # a method that cannot explain the model stops before anything is segmented or explained
    trial = _request(model, loaded, explained[0], args, explainer, device)
    try_methods(args.methods, trial, args.model, "--method", _where(explained[0], several))
    for item in explained:
        item.feature_mask = segment_image(segmenter, item.image.pixels, args, str(item.path))
        if evidence_path is not None:
            item.evidence = _evidence(evidence_path, preprocessing)
    for item in explained:
        request = _request(model, loaded, item, args, explainer, device)
        where = _where(item, several)
        item.results = [
            run_for_command(name, request, args.model, "--method", where) for name in args.methods
        ]
        _print_report(loaded, preprocessing, item, args.top, args.probabilities)
    zero = {
        (str(item.path), result.name): len(result.scores)
        for item in explained
        for result in item.results
        if result.name in EMPTY_RESULT_METHODS and not bool(result.scores.any())  # NaN is no 0
    }
    warn_of_empty_results(zero, len(explained), args.lime_samples)  # once, not per image
    with _writing("--out", args.out):
        _write_figure(explained, loaded, args)
    print(f"figure written to {args.out}")
    if args.save is not None:
        with _writing("--save", args.save):
            json_path = save_results(args.save, explained, loaded, preprocessing, args)
        print(f"data written to {args.save} and {json_path}")
    return 0


def _distinct_files(paths: list[Path]) -> list[Path]:
    """``paths`` with each file once, as first named; a note for each file named again.

    ``a.png ./a.png`` name one file: explaining it twice would draw two identical rows, save
    them twice and count it twice in the once-per-run warnings.
    """
    names: dict[Path, list[Path]] = {}
    for path in paths:
        names.setdefault(path.resolve(), []).append(path)
    for first, *again in (given for given in names.values() if len(given) > 1):
        spellings = list(dict.fromkeys(str(path) for path in again if str(path) != str(first)))
        as_ = f" (as {', '.join(spellings)})" if spellings else ""
        print(f"note: {first} is given {counted(1 + len(again), 'time')}{as_}: explained once")
    return [given[0] for given in names.values()]


def _where(item: Explained, several: bool) -> str:
    """The image a refusal names: ``item``'s path among several images, none for one."""
    return str(item.path) if several else ""


def _request(
    model: nn.Module,
    loaded: LoadedModel,
    item: Explained,
    args: argparse.Namespace,
    explainer: Any,
    device: Any,
) -> Request:
    """What the methods get for ``item``.

    Its feature mask once it is segmented; before, a placeholder that `try_methods` replaces.
    """
    import torch

    from ctc_plugin.commands.methods import Request

    mask = item.feature_mask if item.feature_mask is not None else torch.zeros(1, 1, 1, 1)
    return Request.with_options_of(
        args,
        model=model,
        pixels=model_pixels(loaded, item.image.pixels, device),
        target=item.target,
        feature_mask=mask.long().to(device),
        show_progress=not args.no_progress,
        explainer=explainer,
    )


def _classified(
    model: nn.Module,
    loaded: LoadedModel,
    spec: str | None,
    path: Path,
    image: PreparedImage,
    device: torch.device,
    several: bool = False,
) -> Explained:
    """``image`` with the model's logits and the ``--target`` class (no segments yet).

    ``several``: the image is one of several, which a refusal of the model names.

    Raises:
        CLIError: If the model cannot take the image's size, gives scores that are not finite
            (NaN or infinite: nothing to explain), or ``--target`` does not fit it.
    """
    own_size = is_own_size(loaded.preprocessing, image.size)
    where = str(path) if several else ""
    pixels = model_pixels(loaded, image.pixels, device)
    logits = model_logits(model, loaded, pixels, own_size, where=where)
    check_finite_scores(logits, loaded, str(path))
    fit_class_names(loaded, logits)  # weights with other classes than the metadata's
    target = target_class(spec, loaded, logits)
    return Explained(path, image, logits, target)


def check_explainer_size(explainer: nn.Module | None, explained: list[Explained]) -> None:
    """Refuse, before any method runs, images of another size than the Explainer's training.

    Raises:
        CLIError: Naming the image, both sizes and the options that give the Explainer's size.
    """
    for item in explained:
        refusal = explainer_size_refusal(explainer, str(item.path), item.image.size)
        if refusal is not None:
            raise CLIError(f"--method explainer: {refusal}")


@contextmanager
def _writing(option: str, path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (disk full, too large, permission) into a CLIError.

    The files are written to a temporary file and renamed, so a failed write leaves the
    previous file as it was.
    """
    from ctc_plugin.commands import os_error_text

    existed = path.exists()
    try:
        yield
    except OSError as error:
        kept = f"; the {path.name} there before is kept as it was" if existed else ""
        raise CLIError(
            f"argument {option}: could not write {path}: "
            f"{os_error_text(error, name_file=False)}{kept}"
        ) from error


def _prepare(preprocessing: ImagePreprocessing, path: Path) -> PreparedImage:
    try:
        return preprocessing(path)
    except ValueError as error:
        raise CLIError(str(error)) from error


def _evidence(path: Path, preprocessing: ImagePreprocessing) -> torch.Tensor:
    """The sample's ground-truth evidence, resized and cropped like the image.

    ``nearest-exact`` keeps the pixel centres where the image's resize puts them (``nearest``
    would take each output pixel's top-left corner, half an output pixel off the image).
    """
    from ctc_plugin.images import read_image

    exact = preprocessing.replace(interpolation="nearest-exact", mean=None, std=None)
    return exact.transform(read_image(path))[0] > 0.5


def _label(loaded: LoadedModel, index: int) -> str:
    return f"{index} ({loaded.classes[index]})" if loaded.classes else str(index)


def _sum_to_one(rows: Iterator[torch.Tensor]) -> bool:
    """Whether every row of outputs adds up to 1: a softmax over the classes, not another dim."""
    return all(abs(float(row.double().sum()) - 1) < 1e-3 for row in rows)


#: The functions a model may end in whose outputs are probabilities, with the report's note.
PROBABILITY_OUTPUTS = dict.fromkeys(
    ("sigmoid", "sigmoid_"),
    "ends in a sigmoid: its outputs are probabilities of independent classes, not logits; the "
    "methods explain them as given (CTC's proportional scores add up to them), and the report "
    "gives each class's own probability",
) | {
    "softmax": "ends in a softmax: its outputs are class probabilities, not logits; the "
    "perturbation and gradient methods explain them as given (CTC needs the logits: give the "
    "model without its softmax), and the report gives each class's own probability",
}


def prediction(logits: torch.Tensor, probabilities: bool = False) -> tuple[int, float]:
    """The predicted class and its probability.

    The softmax over the classes, or the sigmoid of a model with one output (a binary
    classifier's logit, whose softmax would always be 1); for a model whose outputs are
    ``probabilities`` already (it ends in a sigmoid or a softmax), the highest and its own
    value.
    """
    if probabilities:
        return int(logits.argmax()), float(logits.float().max())
    if logits.numel() == 1:
        return 0, float(logits.float().sigmoid().reshape(()))
    return int(logits.argmax()), float(logits.float().softmax(0).max())


def _print_report(
    loaded: LoadedModel,
    preprocessing: ImagePreprocessing,
    item: Explained,
    top: int,
    probabilities: bool = False,
) -> None:
    predicted, probability = prediction(item.logits, probabilities)
    height, width = item.image.size
    original = item.image.original_size or item.image.size
    print(
        f"{item.path}: {original[1]}x{original[0]} -> {width}x{height} ({preprocessing.describe()})"
    )
    if probabilities:  # a sigmoid's or softmax's outputs: no logits, no softmax over them
        print(
            f"model {loaded.name}: highest {_label(loaded, predicted)} p={probability:.3f}; "
            f"explaining target {_label(loaded, item.target)} "
            f"(p={float(item.logits[item.target]):.3f})"
        )
    elif item.logits.numel() == 1:  # a binary classifier's one logit: no class is "predicted"
        print(
            f"model {loaded.name}: one output, logit {float(item.logits.reshape(())):.3f}, "
            f"sigmoid p={probability:.3f}; explaining it"
        )
    else:
        print(
            f"model {loaded.name}: predicted {_label(loaded, predicted)} "
            f"p={probability:.3f}; explaining target {_label(loaded, item.target)} "
            f"(logit {item.logits[item.target]:.3f})"
        )
    mask = item.feature_mask[0, 0]
    evidence = item.evidence
    for result in item.results:
        kind = "segment scores" if result.per_segment else "mean of the map per segment"
        print(f"{result.title}: {kind}, {counted(len(result.scores), 'segment')}")
        header = f"{'rank':>4}  {'segment':>7}  {'score':>10}  {'area':>6}"
        print(header + ("  in evidence" if evidence is not None else ""))
        order = sorted(range(len(result.scores)), key=lambda k: -float(result.scores[k]))
        for rank, feature in enumerate(order[:top], start=1):
            inside = mask == feature
            line = (
                f"{rank:>4}  {feature:>7}  {float(result.scores[feature]):>10.4f}  "
                f"{inside.float().mean():>6.1%}"
            )
            if evidence is not None:
                share = (inside & evidence).sum() / inside.sum().clamp(min=1)
                line += f"  {share:>11.0%}"
            print(line)
        if len(order) > top:
            print(f"  ... {len(order) - top} more (--top {len(order)} lists all)")
        if result.per_segment:
            print(f"  sum of scores {float(result.scores.sum()):.4f}")


def _write_figure(
    explained: list[Explained], loaded: LoadedModel, args: argparse.Namespace
) -> None:
    import matplotlib

    from ctc_plugin.viz import (
        new_rows_figure,
        panel_width,
        plot_segment_scores,
        save_figure,
        wrap_to_width,
    )

    widths = [panel_width(*item.image.size) for item in explained]
    figure, axes = new_rows_figure(widths, len(args.methods))
    for row, item in zip(axes, explained):
        plot_segment_scores(
            item.image.pixels[0],
            item.feature_mask[0, 0],
            {result.title: _drawn(result) for result in item.results},
            top_k=min(args.top, 5),
            evidence=item.evidence,
            axes=list(row),
        )
        segments = len(item.results[0].scores) if item.results else 0
        title = f"{item.path.name}\n{_short(loaded, item.target)}, {counted(segments, 'segment')}"
        row[0].set_title(  # a file or class name is drawn as written: "$" starts no mathtext
            wrap_to_width(title, panel_width(*item.image.size), 9), fontsize=9, parse_math=False
        )
    title = f"{loaded.name}: {', '.join(args.methods)}"
    size = matplotlib.rcParams["figure.titlesize"]
    figure.suptitle(wrap_to_width(title, figure.get_figwidth(), size), parse_math=False)
    save_figure(figure, args.out)


def _drawn(result: Result) -> Any:
    """What a panel draws: a method's segment scores ``(ids, scores)``, or its per-pixel map.

    Segment scores are labelled as such in the figure (the map of a feature method repeats
    them in every pixel of a segment); ``scores[k]`` is segment ``k``'s.
    """
    if not result.per_segment:
        return result.attribution
    import torch

    return torch.arange(len(result.scores)), result.scores


def _short(loaded: LoadedModel, index: int) -> str:
    name = loaded.classes[index] if loaded.classes else None
    return f"class {index}" + (f" ({name})" if name else "")


def save_results(
    path: Path,
    explained: list[Explained],
    loaded: LoadedModel,
    preprocessing: ImagePreprocessing,
    args: argparse.Namespace,
) -> Path:
    """Write ``path`` (``.npz``) and the rankings beside it (``.json``); return the JSON path.

    The ``.npz`` holds, for image ``i`` (in the order given) and each method ``M``:
    ``image{i}/pixels`` (3, H, W) float32 in [0, 1], ``image{i}/feature_mask`` (H, W) int64
    segment ids ``0..K-1``, ``image{i}/logits`` (classes,) float32 (float64 for a model that
    computes in float64), ``image{i}/target`` (),
    ``image{i}/{M}/scores`` (K,) float64 (segment ``k``'s score at index ``k``) and
    ``image{i}/{M}/attribution`` (H, W) float32. Read it with
    ``numpy.load(path, allow_pickle=False)``. Both files are written under temporary names in
    their folder and renamed into place once both are written, so a failed or killed write
    leaves the previous pair.

    Raises:
        OSError: If a file cannot be written (disk full, too large, no permission).
    """
    import numpy as np

    from ctc_plugin.resumable.atomic import write_atomic_group

    arrays: dict[str, np.ndarray] = {}
    images = []
    for i, item in enumerate(explained):
        key = f"image{i}"
        mask = item.feature_mask[0, 0]
        arrays[f"{key}/pixels"] = item.image.pixels[0].numpy().astype(np.float32)
        arrays[f"{key}/feature_mask"] = mask.numpy().astype(np.int64)
        arrays[f"{key}/logits"] = item.logits.numpy()
        arrays[f"{key}/target"] = np.asarray(item.target, dtype=np.int64)
        areas = np.bincount(mask.flatten().numpy(), minlength=int(mask.max()) + 1) / mask.numel()
        methods = {}
        for result in item.results:
            arrays[f"{key}/{result.name}/scores"] = result.scores.numpy().astype(np.float64)
            arrays[f"{key}/{result.name}/attribution"] = result.attribution.numpy()
            order = np.argsort(-result.scores.numpy(), kind="stable")
            methods[result.name] = {
                "title": result.title,
                "scores": "segment scores" if result.per_segment else "segment means of the map",
                "ranking": [
                    {
                        "rank": rank,
                        "segment": int(k),
                        "score": float(result.scores[k]),
                        "area": float(areas[k]),
                    }
                    for rank, k in enumerate(order, start=1)
                ],
            }
        probabilities = getattr(args, "probabilities", False)
        predicted, probability = prediction(item.logits, probabilities)
        images.append(
            {
                "key": key,
                "path": str(item.path),
                "original_size": list(item.image.original_size or item.image.size),
                "size": list(item.image.size),
                "predicted": {
                    "index": predicted,
                    "name": loaded.classes[predicted] if loaded.classes else None,
                    "probability": probability,
                },
                "target": {
                    "index": item.target,
                    "name": loaded.classes[item.target] if loaded.classes else None,
                    # the model's output for it, named for what it is
                    "probability" if probabilities else "logit": float(item.logits[item.target]),
                },
                "segments": int(mask.max()) + 1,
                "methods": methods,
            }
        )
    summary = {
        "model": loaded.name,
        "weights": str(args.weights) if args.weights else None,
        "precision": {  # a half-precision model ran in float32 (choose_precision)
            "ran_in": str(loaded_dtype(loaded)).removeprefix("torch."),
            "cast_from": list(loaded.cast_from),
        },
        "preprocessing": {
            "resize": preprocessing.resize,
            "crop": preprocessing.crop,
            "mean": preprocessing.mean,
            "std": preprocessing.std,
            "interpolation": preprocessing.interpolation,
            "from": loaded.source,
        },
        "segmenter": args.segmenter,
        "bias_sharing": args.bias_sharing,
        "methods": list(args.methods),
        "images": images,
    }
    # both files under temporary names, renamed once both are written: a failed write keeps
    # the previous pair (an open file: numpy adds no second .npz suffix)
    json_path = path.with_suffix(".json")
    text = json.dumps(summary, indent=2) + "\n"
    write_atomic_group(
        [
            (path, lambda stream: np.savez_compressed(stream, **arrays)),
            (json_path, lambda stream: stream.write(text.encode())),
        ]
    )
    return json_path


def _sample_path(split: str, kind: str) -> Path:
    from ctc_plugin.datasets import sample_path

    return sample_path(split, kind)


def run_explain(args: argparse.Namespace) -> int:
    """Entry point of ``ctc-plugin explain``."""
    if args.model is None:
        from ctc_plugin.datasets.splits import SPLITS

        args.model = DEFAULT_MODEL
        if args.images:  # the user's images, explained by a model of synthetic shapes
            print(
                f"note: no --model given: the zoo's {DEFAULT_MODEL} trained on the synthetic "
                f"shapes ({', '.join(SPLITS['shapes'])}) explains these images; give --model "
                "for your classifier (ctc-plugin explain --help)"
            )
    elif not args.images and not is_zoo_spec(args.model):  # the sample is a zoo model's image
        print(
            f"note: no IMAGE given: {args.model} explains the bundled synthetic sample; give "
            "the paths of your images before the options (ctc-plugin explain IMAGE ... --model "
            f"{args.model} ...)"
        )
    with torch_threads(args.threads):
        return explain(args)


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``ctc-plugin demo``: the bundled sample with its ground-truth evidence.

    Raises:
        CLIError: For a zoo ``--model`` trained on another split than ``--split``'s sample.
    """
    args.model, args.split = model_for_split(args.model or DEFAULT_MODEL, args.split, _split_option)
    with torch_threads(args.threads):
        return explain(args, evidence_path=_sample_path(args.split, "evidence"))


def _split_option(split: str) -> str:
    """The option of ``demo`` that chooses ``split``."""
    return f"--split {split}"
