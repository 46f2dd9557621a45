"""``ctc-plugin zoo``: train (reproduce) and evaluate the zoo's models, rewrite the manifest."""

from __future__ import annotations

import argparse
import time

from ctc_plugin.commands import CLIError, add_threads_option, torch_threads
from ctc_plugin.commands.arguments import (
    add_split_option,
    checked,
    existing_folder,
    input_file,
    output_folder,
    positive_int,
    seed,
)
from ctc_plugin.wording import counted


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ctc-plugin zoo train``, ``eval`` and ``manifest``."""
    from ctc_plugin.zoo.settings import FAMILY_TRAINING, SHIPPED_THREADS, TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser("zoo", help="train or evaluate the small model zoo")
    actions = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    train = actions.add_parser(
        "train", help="train a zoo model (the defaults reproduce the shipped weight file)"
    )
    _add_models(train, "train")
    train.add_argument(
        "--seed",
        type=seed,
        default=defaults.seed,
        help="seed of the initialisation, the shuffling and the flips (the training images are "
        "always seed 0's; default: %(default)s)",
    )
    train.add_argument(
        "--size",
        type=positive_int,
        default=defaults.size,
        help="training images (default: %(default)s)",
    )
    shipped = ", ".join(
        f"{family} {values['epochs']}" for family, values in FAMILY_TRAINING.items()
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"passes over the training images (default: the family's shipped setting, "
        f"{defaults.epochs}; {shipped})",
    )
    add_threads_option(
        train,
        SHIPPED_THREADS,
        "torch threads (results are bitwise reproducible per thread count, so another count "
        f"than the shipped files' needs --out; default: {SHIPPED_THREADS})",
    )
    train.add_argument(
        "--eval-size",
        type=positive_int,
        default=500,
        help="test images (seed 1) measured after training (default: %(default)s)",
    )
    train.add_argument(
        "--out",
        type=output_folder,
        default=None,
        help="output folder (default: the package's shipped weights folder, replacing the "
        "shipped file: only with the shipped recipe, the default options)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    train.set_defaults(func=run_train)

    evaluate = actions.add_parser("eval", help="measure test accuracy on a fresh sample")
    _add_models(evaluate, "evaluate")
    evaluate.add_argument(
        "--size", type=positive_int, default=500, help="test images (default: %(default)s)"
    )
    evaluate.add_argument(
        "--seed",
        type=seed,
        default=1,
        help="test seed (not 0, the training one; default: %(default)s)",
    )
    evaluate.add_argument(
        "--weights", type=input_file, default=None, help="a weight file to evaluate"
    )
    add_threads_option(
        evaluate,
        None,
        "torch CPU threads (default: torch.get_num_threads(), which OMP_NUM_THREADS sets)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    evaluate.set_defaults(func=run_eval)

    manifest = actions.add_parser(
        "manifest",
        help="rewrite the sha256 manifest (SHA256SUMS) of the shipped weights folder from the "
        "files on disk (after replacing weight files by hand; zoo train and explainer "
        "train/gate update it themselves)",
    )
    manifest.add_argument(
        "--folder",
        type=existing_folder,
        default=None,
        help="folder of .pt files (default: the package's shipped weights folder)",
    )
    manifest.set_defaults(func=run_manifest)


def _add_models(parser: argparse.ArgumentParser, verb: str) -> None:
    """Add the ``FAMILY`` arguments (one or more) and ``--split``: the zoo models to ``verb``."""
    from ctc_plugin.zoo.settings import FAMILIES

    parser.add_argument(
        "families",
        nargs="+",
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"model families to {verb}: {', '.join(FAMILIES)}",
    )
    add_split_option(parser)


def run_train(args: argparse.Namespace) -> int:
    """Train each requested family (once, however often named) on ``--threads``."""
    args.families = list(dict.fromkeys(args.families))
    with torch_threads(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    """Train each requested family and save its float32 state dict.

    Each file is written under a temporary name beside it and renamed into place, so a save
    that fails (disk full) or is killed leaves the previous file as it was; the temporary files
    that killed saves left (their processes gone) are removed before each save. A file written
    into the shipped weights folder gets its manifest entry updated.
    """
    from ctc_plugin.files import write_torch_file
    from ctc_plugin.resumable.atomic import remove_stale_temporaries
    from ctc_plugin.weights import WEIGHTS_DIR, record_in_manifest
    from ctc_plugin.zoo import train_family, weights_path
    from ctc_plugin.zoo.training import evaluate, training_config

    # the default folder is checked as a given --out is, before any training
    folder = args.out or checked("--out", output_folder, str(WEIGHTS_DIR))
    if args.out is None:
        _check_shipped_recipe(args)
    for family in args.families:
        config = training_config(family, size=args.size, epochs=args.epochs, seed=args.seed)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / weights_path(family, args.split).name
        start = time.perf_counter()
        model = train_family(family, args.split, config, show_progress=not args.no_progress)
        elapsed = time.perf_counter() - start
        state = {
            k: v.detach().float() if v.is_floating_point() else v.detach()
            for k, v in model.state_dict().items()
        }
        remove_stale_temporaries(out.parent)
        write_torch_file(out, state)
        record_in_manifest(out)  # keeps the shipped weights' manifest in step with the file
        accuracy = evaluate(
            model, args.split, size=args.eval_size, show_progress=not args.no_progress
        )
        print(
            f"{family}-{args.split}: trained in {elapsed:.0f} s, test accuracy "
            f"{accuracy:.1%} ({counted(args.eval_size, 'image')}, seed 1) -> {out}"
        )
    return 0


def _check_shipped_recipe(args: argparse.Namespace) -> None:
    """Refuse, before any training, a run that would replace a shipped file with another recipe.

    Without ``--out`` the files go into the shipped weights folder, and the manifest takes
    their new sha256: a trial run (one epoch, fewer images) would replace a shipped model that
    every command then loads without a word. Only the shipped recipe (the defaults) writes there
    by default; another is written there only when ``--out`` names the folder. The thread count
    is part of the recipe: training is bitwise reproducible per count only, so ``--threads 2``
    would replace the shipped weights with others.

    Raises:
        CLIError: Naming the options that differ and what to give.
    """
    from ctc_plugin.weights import WEIGHTS_DIR
    from ctc_plugin.zoo.settings import SHIPPED_THREADS
    from ctc_plugin.zoo.training import training_config

    for family in args.families:
        asked = training_config(family, size=args.size, epochs=args.epochs, seed=args.seed)
        recipe = training_config(family)
        differ = [
            f"--{name} {getattr(asked, name)} (the recipe's: {getattr(recipe, name)})"
            for name in ("epochs", "size", "seed")
            if getattr(asked, name) != getattr(recipe, name)
        ]
        if args.threads != SHIPPED_THREADS:
            differ.append(f"--threads {args.threads} (the recipe's: {SHIPPED_THREADS})")
        if differ:
            raise CLIError(
                f"without --out, zoo train replaces the shipped {family}-{args.split}.pt, and "
                f"{', '.join(differ)} is not its recipe: give --out FOLDER for this model, or "
                f"--out {WEIGHTS_DIR} to replace the shipped file anyway"
            )


def run_eval(args: argparse.Namespace) -> int:
    """Print the test accuracy of each requested family (once, however often named).

    On ``--threads`` torch threads (default: torch's own count).
    """
    from ctc_plugin.zoo import evaluate, load

    args.families = list(dict.fromkeys(args.families))
    if args.weights is not None and len(args.families) != 1:
        raise ValueError("--weights needs exactly one FAMILY")
    with torch_threads(args.threads):
        for family in args.families:
            model = load(family, args.split, weights=args.weights)
            accuracy = evaluate(
                model,
                args.split,
                size=args.size,
                seed=args.seed,
                show_progress=not args.no_progress,
            )
            images = counted(args.size, "image")
            print(f"{family}-{args.split}: {accuracy:.1%} ({images}, seed {args.seed})")
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    """Rewrite the sha256 manifest of the weights folder; print where and how many files."""
    from ctc_plugin.weights import read_manifest, write_manifest

    path = write_manifest(args.folder)
    print(f"wrote {path} ({counted(len(read_manifest(path.parent)), 'file')})")
    return 0
