"""``ctc-plugin explain-dataset SOURCE --methods ... --out DIR``: explain a whole data set.

The command line of [`explain_dataset`][ctc_plugin.runs.engine.explain_dataset]. Only the
standard library and light modules are imported while the parser is built.
"""

from __future__ import annotations

import argparse

from ctc_plugin.commands import add_ray_options, ray_options
from ctc_plugin.commands.arguments import (
    add_preprocessing_options,
    positive_int,
    run_folder,
    thread_count,
)
from ctc_plugin.commands.explain_setup import (
    add_method_options,
    add_model_options,
    add_segmenter_options,
    method_name,
    sam_checkpoint_option,
)
from ctc_plugin.commands.methods import METHODS
from ctc_plugin.wording import counted


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``explain-dataset`` subcommand."""
    parser = subparsers.add_parser(
        "explain-dataset",
        usage="%(prog)s SOURCE --methods METHOD [METHOD ...] --out DIR [options]",
        help="explain every image of a folder or data set; resumable, results as Parquet",
        description="Segment every image of SOURCE once, explain it with every --methods "
        "and write the results to DIR shard by shard: DIR/shards/shard-NNNNN.parquet (one row "
        "per image, target and method: feature ids, scores, seconds) and .npz (masks and "
        "attributions). Killed or stopped, the same command finishes the rest; finished "
        "shards are not computed again.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="an image folder (class subfolders optional, as torchvision's ImageFolder), or "
        "shapes / shapes:composite (the bundled synthetic images, with --images N)",
    )
    parser.add_argument(
        "--methods",
        "--method",  # explain's spelling
        nargs="+",
        required=True,
        type=method_name,
        metavar="METHOD",
        help="one or more of: " + ", ".join(METHODS),
    )
    parser.add_argument(
        "--out",
        required=True,
        type=run_folder,
        metavar="DIR",
        help="the run folder: new or empty to start, this run's folder to resume",
    )
    parser.add_argument(
        "--images",
        type=positive_int,
        default=None,
        metavar="N",
        help="how many shapes images; for a folder, at most this many (default: all)",
    )
    add_model_options(parser)
    add_preprocessing_options(parser)
    parser.add_argument(
        "--targets",
        "--target",  # explain's spelling
        nargs="+",
        default=["predicted"],
        metavar="TARGET",
        help="what to explain per image: predicted, label (the class subfolder, ImageNet's "
        "class for WordNet-ID folders such as n01440764, or the shapes label), a class index "
        "(negative ones count from the end) or a class name (default: predicted)",
    )
    add_segmenter_options(parser)
    add_method_options(parser)
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=8,
        metavar="N",
        help="images per shard: written together, redone together after a kill (8)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of each shard's random state and of the shapes images (1)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=1,
        help="torch CPU threads per shard; results repeat bit for bit on the same count (1)",
    )
    add_ray_options(parser, "segmentation and methods on separate workers")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run, resumable=True)  # Ctrl-C: "run the same command again"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ctc-plugin explain-dataset``."""
    from ctc_plugin.commands import CLIError
    from ctc_plugin.resumable import ConfigMismatchError, RayError

    sam_checkpoint_option(args)  # before DIR is made
    ray_options(args)
    try:
        result = _explain(args)
    except RayError as error:  # Ray missing, or its cluster unreachable
        raise CLIError(str(error)) from error
    except ConfigMismatchError as error:  # the options as the command line spells them
        names = {**option_names(args.source), "source.spec": "SOURCE"}
        raise CLIError(str(error.naming(names))) from error
    before = result.shards - result.computed
    print(
        f"{counted(result.images, 'image')} in {counted(result.shards, 'shard')} "
        f"({result.computed} computed now, "
        f"{before} finished before or by another process) in {result.out}; "
        f"{result.seconds:.1f} s"
    )
    return 0


def option_names(source: str) -> dict[str, str]:
    """The command-line option of each configuration key of a run of ``source`` (SOURCE).

    Every option of [`RunConfig`][ctc_plugin.runs.plan.RunConfig] is ``--`` and its name with
    dashes (``shard_size``: ``--shard-size``); on the bundled images ``images`` (their count)
    is ``--images`` too, where on a folder it counts the folder's images. Computed keys
    (``weights_sha256``) and the source's (``source.spec``) keep their names.
    """
    from dataclasses import fields

    from ctc_plugin.runs.plan import RunConfig
    from ctc_plugin.runs.sources import shapes_split

    names = {f.name: "--" + f.name.replace("_", "-") for f in fields(RunConfig) if f.init}
    if shapes_split(source) is not None:
        names["images"] = "--images"
    return names


def _explain(args: argparse.Namespace):
    """Call [`explain_dataset`][ctc_plugin.runs.engine.explain_dataset] with the options."""
    from ctc_plugin.runs.engine import explain_dataset

    return explain_dataset(
        args.source,
        args.methods,
        args.out,
        images=args.images,
        model=args.model,
        weights=args.weights,
        explainer=args.explainer,
        resize=args.resize,
        crop=args.crop,
        mean=args.mean,
        std=args.std,
        targets=args.targets,
        segmenter=args.segmenter,
        segments=args.segments,
        sam_checkpoint=args.sam_checkpoint,
        sam_model_type=args.sam_model_type,
        bias_sharing=args.bias_sharing,
        lime_samples=args.lime_samples,
        perturbations_per_eval=args.perturbations_per_eval,
        shard_size=args.shard_size,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        show_progress=not args.no_progress,
        ray=args.ray,
        ray_workers=args.ray_workers,
    )
