"""``ctc-plugin benchmark``: every method side by side on the zoo models and both data splits."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from ctc_plugin.commands import (
    CLIError,
    add_ray_options,
    add_threads_option,
    ray_options,
    torch_threads,
)
from ctc_plugin.commands.arguments import non_negative_int, output_folder, positive_int

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.harness.benchmark import BenchmarkConfig

DEFAULT_OUT = "out/benchmark"

#: Configuration fields and the options that set them (for error messages).
OPTIONS = {
    "images": "--images",
    "robustness_images": "--robustness-images",
    "families": "--families",
    "splits": "--splits",
    "feature_sources": "--features",
    "methods": "--methods",
    "lime_samples": "--lime-samples",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ctc-plugin benchmark``."""
    from ctc_plugin.datasets.splits import SPLITS
    from ctc_plugin.zoo.settings import FAMILIES

    parser = subparsers.add_parser(
        "benchmark",
        help="compare every explanation method on the zoo models (CSV, Markdown table, plots)",
        description="Explain the same held-out ShapesDataset images with CTC, Integrative CAM, "
        "the Explainer and the established Captum / Zennit / pytorch-grad-cam methods; score "
        "localisation, faithfulness, invariance, sensitivity, time and memory. Runs on the "
        "engine of explain-dataset: each finished method variant is stored under --out as one "
        "shard, the same command run again resumes where it stopped, and --ray runs the "
        "variants on a Ray cluster.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run: the resnet family on both splits (two models), 6 images each, "
        "fewer samples and steps; minutes",
    )
    parser.add_argument(
        "--out", type=output_folder, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})"
    )
    parser.add_argument("--images", type=positive_int, help="images per split (full run: 200)")
    parser.add_argument(
        "--robustness-images",
        type=non_negative_int,
        help="images that also get the robustness metrics (at most --images; default: 24)",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"zoo families ({' '.join(FAMILIES)}; default: all)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=tuple(SPLITS),
        metavar="SPLIT",
        help="shapes and/or composite (default: both)",
    )
    parser.add_argument(
        "--features",
        nargs="+",
        metavar="SOURCE",
        help="feature sources for feature-based methods: oracle superpixel selected (default: "
        "all three)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help="method names to run, as the results name them (CTC-proportional, GradCAM, "
        "Lime, ...; default: every method that applies to the model)",
    )
    parser.add_argument(
        "--lime-samples", type=positive_int, help="samples for Lime and KernelShap (default: 100)"
    )
    add_threads_option(
        parser,
        None,
        "torch CPU threads of each method variant, also on Ray workers (default: "
        "torch's count in this process)",
    )
    add_ray_options(parser, "one method variant per worker at a time")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: write results.md/csv and plots under --out from the pieces "
        "finished so far (labelled partial while the run is incomplete)",
    )
    parser.set_defaults(func=run, resumable=True)  # Ctrl-C: "run the same command again"


def _config(args: argparse.Namespace) -> BenchmarkConfig:
    from ctc_plugin.harness.benchmark import BenchmarkConfig

    config = BenchmarkConfig.quick() if args.quick else BenchmarkConfig()
    overrides = {  # the lists each name once, in the order given (as explain's --method)
        "images": args.images,
        "robustness_images": args.robustness_images,
        "families": _once(args.families),
        "splits": _once(args.splits),
        "feature_sources": _once(_feature_sources(args.features)),
        "methods": _once(_as_the_benchmark_spells(args.methods)),
        "lime_samples": args.lime_samples,
    }
    changes = {key: value for key, value in overrides.items() if value is not None}
    if "images" in changes and "robustness_images" not in changes:
        changes["robustness_images"] = min(config.robustness_images, changes["images"])
    images = changes.get("images", config.images)
    if changes.get("robustness_images", 0) > images:
        where = (
            f"--images {images}"
            if args.images is not None
            else f"{images} per split with {'--quick' if args.quick else 'the full run'}"
        )
        raise CLIError(
            f"--robustness-images {args.robustness_images} is more than the images explained "
            f"({where}): give --robustness-images {images} or less, or more --images"
        )
    return replace(config, **changes)


def _as_the_benchmark_spells(names: list[str] | None) -> list[str] | None:
    """``--methods`` as the benchmark names them (``gradcam`` is ``GradCAM``).

    Two spellings of one method then count once.

    Raises:
        ValueError: For an unknown or ambiguous name (`known_name`).
    """
    if not names:
        return names
    from ctc_plugin.harness.methods import method_names
    from ctc_plugin.wording import known_name

    known = method_names()
    return [known_name(name, known, "method") for name in names]


def _feature_sources(names: list[str] | None) -> list[str] | None:
    """``--features`` as the benchmark spells them (``Oracle`` is ``oracle``), as ``--methods``.

    Raises:
        ValueError: For an unknown name, naming the option and the sources (`known_name`).
    """
    if not names:
        return names
    from ctc_plugin.harness.benchmark import FEATURE_SOURCES
    from ctc_plugin.wording import known_name

    return [known_name(name, FEATURE_SOURCES, "--features source") for name in names]


def _once(names: list[str] | None) -> tuple[str, ...] | None:
    """``names`` without repeats, in the order given (``None`` when not given)."""
    return tuple(dict.fromkeys(names)) if names else None


def _report_only(args: argparse.Namespace) -> int:
    from ctc_plugin.commands import CLIError
    from ctc_plugin.harness.report import write_stored_report

    given = [OPTIONS[key] for key in OPTIONS if getattr(args, _attribute(key)) is not None]
    given += ["--quick"] if args.quick else []
    given += ["--threads"] if args.threads is not None else []  # it computes nothing
    given += ["--ray"] if args.ray is not None else []
    given += ["--ray-workers"] if args.ray_workers is not None else []
    if given:
        raise CLIError(
            f"--report-only uses the configuration stored in {args.out}; drop {' '.join(given)}"
        )
    write_stored_report(args.out)
    print(f"wrote {args.out}/results.md, results.csv, per_image.csv and plots")
    return 0


def _attribute(field: str) -> str:
    return OPTIONS[field].removeprefix("--").replace("-", "_")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the benchmark, or write the report so far, and print where it is."""
    from ctc_plugin.commands import CLIError
    from ctc_plugin.harness.benchmark import run_benchmark
    from ctc_plugin.resumable import ConfigMismatchError, RayError

    if args.report_only:
        return _report_only(args)
    ray, workers = ray_options(args)
    config = _config(args)
    try:
        with torch_threads(args.threads):
            run_benchmark(
                config,
                args.out,
                show_progress=not args.no_progress,
                ray=ray,
                ray_workers=workers,
            )
    except RayError as error:  # Ray missing, or its cluster unreachable
        raise CLIError(str(error)) from error
    except ConfigMismatchError as error:
        listed = "; ".join(
            f"{OPTIONS.get(key, key)}: {old!r} there, {new!r} now"
            for key, old, new in error.differences
        )
        raise CLIError(
            f"{args.out} holds a benchmark run with other options ({listed}); run the same "
            "command as before to resume it, or choose a fresh --out"
        ) from error
    print(
        f"wrote {args.out}/results.md, results.csv, per_image.csv, curves.png, "
        "invariance_sensitivity.png"
    )
    return 0
