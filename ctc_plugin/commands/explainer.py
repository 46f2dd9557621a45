"""``ctc-plugin explainer train`` / ``gate``: build Explainers for zoo models, reproducibly.

``train`` trains one; ``gate`` turns a trained default explainer into a class-specific one by
gating its masks with class maps: the classifier's own (a copy of it, no training) or those of
a small student distilled from them (``--gate student``); or it distils both the class maps
and the default explainer's masks into one small network (``--gate student-unet``), as fast as
the default explainer. Training
runs on the CPU with PyTorch's thread count, which the files record: the same command gives
the same weights at the same count (other counts sum in other orders).
"""

from __future__ import annotations

import argparse
import shlex
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import add_threads_option, torch_threads
from ctc_plugin.commands.arguments import (
    add_split_option,
    check_outputs_spare_inputs,
    checked,
    finite_float,
    fraction,
    input_file,
    integer,
    non_negative_float,
    output_file,
    positive_float,
    positive_int,
    real,
    same_file,
    seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ctc_plugin.explainer.checkpoints import ResumeMismatchError
    from ctc_plugin.explainer.network import Explainer
    from ctc_plugin.explainer.training import FitResult

#: Seed of the validation images (the training images use ``TRAIN_SEED``; tests use others).
VAL_SEED = 1000

#: Seed of the images the two-object training images are composed from.
TWO_OBJECT_SEED = 3000

#: Gates that train a student network (they take ``STUDENT_OPTIONS``).
STUDENT_GATES = ("student", "student-unet")

#: Images per distillation step of the student gates.
STUDENT_BATCH = 64

#: Options of the student gates: flag, default, option type, help (an error with another gate).
STUDENT_OPTIONS = (
    ("--student-width", 8, positive_int, "channels of the student's first block"),
    ("--student-epochs", 10, positive_int, "distillation epochs"),
    (
        "--student-images",
        3000,
        positive_int,
        "single-object training images; shapes adds half as many two-object ones (at least "
        "one batch of 64 in all: 43 on shapes)",
    ),
    ("--seed", 0, seed, "seed of the student and its batches"),
)

#: Defaults of this command (the shipped explainers' commands are stored in their files).
DEFAULTS: dict[str, Any] = {
    "train_size": 1200,
    "val_size": 100,
    "batch_size": 32,
    "epochs": 4,
    "lr": 1e-2,
    "width": 8,
    "depth": 3,
    "input_scale": 1.0,
    "two_object_fraction": 0.0,
    "baseline": 0.5,
    "patience": 2,
    "seed": 0,
}


#: Help of ``--threads``: training sums run in an order that depends on the thread count.
THREADS_HELP = (
    "torch CPU threads (default: torch.get_num_threads(), which OMP_NUM_THREADS sets); the "
    "same command at the same count gives the same weights, so the stored command names it"
)

#: Loss weights and area bounds settable on the command line (``None``: the preset's value).
WEIGHTS = (
    "entropy_weight",
    "tv_weight",
    "area_weight",
    "target_area_weight",
    "nontarget_area_weight",
    "a_min",
    "a_max",
)

#: The option type of each of ``WEIGHTS``: weights are 0 or more, area bounds fractions.
WEIGHT_TYPES = {name: fraction if name.startswith("a_") else non_negative_float for name in WEIGHTS}


def built_with() -> dict[str, str]:
    """What a trained file's floats depend on besides its command.

    The torch release and the CPU kernels torch chose
    (``torch.backends.cpu.get_cpu_capability()``, e.g. ``"AVX512"``): the same command gives
    the same weights bit for bit only where both match, as training amplifies the last bits
    that different kernels give.
    """
    import torch

    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability()}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``explainer train`` and ``explainer gate``."""
    from ctc_plugin.explainer.presets import preset_names
    from ctc_plugin.zoo.settings import FAMILIES

    parser = subparsers.add_parser(
        "explainer",
        help="train Explainer mask networks for zoo models",
        description=(__doc__ or "").replace("``", ""),  # the docstring's markup, not shown
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train an explainer for a zoo model",
        description="Train an explainer (a small U-Net, or with --backbone classifier a "
        "fine-tuned copy of the classifier plus a small U-Net) against a frozen zoo model on "
        "ShapesDataset images (seed 0 for training, seed 1000 for early stopping, seed 3000 for "
        "the optional two-object images). Each shipped explainer "
        "stores the exact command that made it in its metadata['command'].",
    )
    train.add_argument(
        "--model",
        required=True,
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"zoo family: {', '.join(FAMILIES)}",
    )
    add_split_option(train)
    train.add_argument(
        "--weights", type=input_file, help="classifier weights instead of the shipped"
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULTS["epochs"],
        help="most epochs (default: %(default)s)",
    )
    train.add_argument(
        "--seed", type=seed, default=DEFAULTS["seed"], help="random seed (default: %(default)s)"
    )
    train.add_argument(
        "--out", type=output_file, help="output file (default explainer-MODEL-SPLIT.pt)"
    )
    train.add_argument("--resume", type=input_file, help="checkpoint to continue from")
    train.add_argument("--checkpoint", type=output_file, help="checkpoint file (default OUT.ckpt)")
    train.add_argument(
        "--preset",
        type=_preset_name,
        default="default",
        help=f"published loss weights by name: {', '.join(preset_names())} (default: default)",
    )
    train.add_argument(
        "--lr",
        type=positive_float,
        default=DEFAULTS["lr"],
        help="Adam learning rate (default: %(default)s)",
    )
    for name in WEIGHTS:
        train.add_argument(
            f"--{name.replace('_', '-')}",
            type=WEIGHT_TYPES[name],
            help=f"{name} (default: the preset's)",
        )
    train.add_argument(
        "--backbone",
        choices=("unet-small", "classifier"),
        default="unet-small",
        help="unet-small (fast) or classifier (class-specific masks: a trainable copy of the "
        "model with its head applied per position, refined by a small U-Net)",
    )
    train.add_argument(
        "--width",
        type=positive_int,
        default=DEFAULTS["width"],
        help="U-Net channels (default: %(default)s)",
    )
    train.add_argument(
        "--depth",
        type=integer(2),
        default=DEFAULTS["depth"],
        help="U-Net resolutions, 2 or more (default 3)",
    )
    train.add_argument(
        "--input-scale",
        type=real(0.0, 1.0, positive=True),
        default=DEFAULTS["input_scale"],
        help="resize images by this factor in (0, 1] before the U-Net (0.25: 1/16 of the pixels)",
    )
    train.add_argument(
        "--two-object-fraction",
        type=non_negative_float,
        default=DEFAULTS["two_object_fraction"],
        help="add this fraction of --train-size images holding two shapes of different classes, "
        "with multi-label targets (shapes split only; default 0)",
    )
    train.add_argument(
        "--train-size",
        type=positive_int,
        default=DEFAULTS["train_size"],
        help="training images (default: %(default)s)",
    )
    train.add_argument(
        "--val-size",
        type=positive_int,
        default=DEFAULTS["val_size"],
        help="validation images for early stopping (default: %(default)s)",
    )
    train.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS["batch_size"],
        help="images per step (default: %(default)s)",
    )
    train.add_argument(
        "--patience",
        type=positive_int,
        default=DEFAULTS["patience"],
        help="epochs without improvement before stopping (default: %(default)s)",
    )
    train.add_argument(
        "--baseline",
        type=finite_float,
        default=DEFAULTS["baseline"],
        help="value masked-out pixels take (0.5: the zoo models' normalisation mean)",
    )
    add_threads_option(train, None, THREADS_HELP)
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    train.set_defaults(func=run)

    gate = actions.add_parser(
        "gate",
        help="make a class-specific explainer from a trained default one",
        description="Gate a trained default explainer's masks with the zoo model's class maps "
        "(its head applied per position): mask_c = sigmoid(S_c) * sigmoid(a (CAM_c / max CAM_c "
        "- t)). --gate classifier (default) holds a copy of the classifier (backbone "
        "'classifier-gated'; load with Explainer.load(PATH, classifier=model)); --gate student "
        "distils the class maps into a small student network first (backbone 'student-gated', "
        "under twice the default explainer's cost; load with Explainer.load(PATH)); --gate "
        "student-unet distils the class maps and the default explainer's masks into one small "
        "network (backbone 'student-unet', about the default explainer's cost; load with "
        "Explainer.load(PATH)).",
    )
    gate.add_argument(
        "--model",
        required=True,
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"zoo family: {', '.join(FAMILIES)}",
    )
    add_split_option(gate)
    gate.add_argument(
        "--mask-explainer",
        type=input_file,
        help="default explainer file (default: the shipped one)",
    )
    gate.add_argument(
        "--sharpness", type=positive_float, default=10.0, help="gate sharpness a (10)"
    )
    gate.add_argument("--threshold", type=finite_float, default=0.3, help="gate threshold t (0.3)")
    gate.add_argument(
        "--mask-offset",
        type=finite_float,
        default=0.0,
        help="added to the mask logits S (0): larger values give larger masks",
    )
    gate.add_argument(
        "--gate",
        choices=("classifier", *STUDENT_GATES),
        default="classifier",
        help="where the class maps come from: a copy of the classifier, a distilled student, "
        "or one distilled network for class maps and masks",
    )
    student = gate.add_argument_group("students (--gate student and student-unet only)")
    for flag, default, kind, text in STUDENT_OPTIONS:
        student.add_argument(flag, type=kind, help=f"{text} ({default})")
    student.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(
        gate,
        None,
        "torch CPU threads for the student gates' distillation (default: "
        "torch.get_num_threads()); recorded in their stored command, since the same command "
        "at the same count gives the same weights",
    )
    gate.add_argument(
        "--out", type=output_file, help="output file (default explainer-MODEL-SPLIT-gated.pt)"
    )
    gate.set_defaults(func=run_gate)


def _command_line(args: argparse.Namespace) -> str:
    """Return the full command that reproduces this run (every setting spelled out)."""
    words = ["ctc-plugin", "explainer", "train", "--model", args.model, "--split", args.split]
    if args.weights is not None:  # another classifier than the shipped one
        words += ["--weights", str(args.weights)]
    if args.backbone != "unet-small":
        words += ["--backbone", args.backbone]
    for name in (
        "epochs",
        "seed",
        "preset",
        "lr",
        "width",
        "depth",
        "input_scale",
        "train_size",
        "val_size",
    ):
        words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("two_object_fraction", "batch_size", "patience", "baseline"):
        words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in WEIGHTS:
        if getattr(args, name) is not None:
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return shlex.join([*words, "--threads", str(args.threads)])


def run(args: argparse.Namespace) -> int:
    """Train, save and report one explainer on ``--threads``; return the exit status."""
    with torch_threads(args.threads) as args.threads:
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    """Train, save and report one explainer; return the exit status."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ctc_plugin import zoo
    from ctc_plugin.commands import CLIError
    from ctc_plugin.datasets import TRAIN_SEED, ShapesDataset
    from ctc_plugin.explainer.backbones import build_backbone
    from ctc_plugin.explainer.checkpoints import ResumeMismatchError
    from ctc_plugin.explainer.network import Explainer
    from ctc_plugin.explainer.presets import get_preset
    from ctc_plugin.explainer.specificity import two_object_training_data

    if args.two_object_fraction > 0 and args.split != "shapes":
        raise ValueError("--two-object-fraction composes shapes images: use it with --split shapes")
    count = round(args.two_object_fraction * args.train_size)
    if args.two_object_fraction > 0 and count == 0:
        raise ValueError(
            f"--two-object-fraction {args.two_object_fraction:g} of --train-size "
            f"{args.train_size} is no two-object image: give a fraction of at least "
            f"{0.5 / args.train_size:.2g} or more --train-size"
        )
    out, checkpoint = _train_outputs(args)
    started = time.time()
    args.interrupt_hint = partial(_resume_hint, checkpoint, started)
    classifier = zoo.load(args.model, args.split, weights=args.weights)
    progress = not args.no_progress
    train = ShapesDataset(args.split, size=args.train_size, seed=TRAIN_SEED)
    val = ShapesDataset(args.split, size=args.val_size, seed=VAL_SEED)
    torch.manual_seed(args.seed)  # drawing the images below takes nothing from torch's generator
    backbone_options = {}
    if args.backbone == "classifier":
        backbone_options = {"classifier": classifier, "head": zoo.HEADS[args.model]}
    backbone = build_backbone(
        args.backbone, train.num_classes, width=args.width, depth=args.depth, **backbone_options
    )
    explainer = Explainer(backbone, train.num_classes, input_scale=args.input_scale)
    _check_image_size(explainer, train.image_size)
    train_images, train_labels = train.tensors(show_progress=progress)
    val_images, val_labels = val.tensors(show_progress=progress)
    if count > 0:  # multi-label targets for every image, one-hot for the single-object ones
        extra_images, extra_labels = two_object_training_data(count, TWO_OBJECT_SEED)
        train_images = torch.cat([train_images, extra_images])
        one_hot = torch.nn.functional.one_hot
        train_labels = torch.cat([one_hot(train_labels, train.num_classes).float(), extra_labels])
        val_labels = one_hot(val_labels, train.num_classes).float()
    hyperparameters = get_preset(args.preset).updated(
        lr=args.lr, **{name: getattr(args, name) for name in WEIGHTS}
    )
    try:
        result = explainer.fit(
            classifier,
            DataLoader(TensorDataset(train_images, train_labels), args.batch_size, shuffle=True),
            DataLoader(TensorDataset(val_images, val_labels), args.batch_size),
            hyperparameters,
            epochs=args.epochs,
            patience=args.patience,
            seed=args.seed,
            checkpoint=checkpoint,
            resume=args.resume,
            baseline=args.baseline,
            show_progress=progress,
        )
    except ResumeMismatchError as error:
        raise CLIError(resume_mismatch(error, args.resume)) from error
    metadata = {
        "command": _command_line(args),
        "model": args.model,
        "split": args.split,
        "backbone": args.backbone,
        "seed": args.seed,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "two_object_images": count,
        "batch_size": args.batch_size,
        "baseline": args.baseline,
        "preset": args.preset,
        "hyperparameters": result.hyperparameters.as_dict(),
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "history": result.history,
        **built_with(),
        "threads": args.threads,
    }
    explainer.save(out, metadata)
    # a resume with as many epochs as its checkpoint holds trains nothing and writes no new one
    # (a file of that name may be another run's)
    written = args.resume is None or _written_since(checkpoint, started)
    holding = checkpoint if written else args.resume
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {trained_summary(result)}; its "
        f"training checkpoint is {holding} (--resume it with more --epochs to train on)"
    )
    return 0


#: The ``explainer train`` option behind each setting ``fit`` checks on resume (the loss
#: weights' and area bounds' options are their names with dashes).
RESUME_OPTIONS = {
    "patience": "--patience",
    "seed": "--seed",
    "baseline": "--baseline",
    "input_scale": "--input-scale",
    "multilabel": "--two-object-fraction",
    "lr": "--lr",
    **{name: f"--{name.replace('_', '-')}" for name in WEIGHTS},
}


def resume_mismatch(error: ResumeMismatchError, resume: Path) -> str:
    """``explainer train``'s words for a ``--resume`` of another run: its options, not fit's.

    Each difference is named by the options that set it (a loader's batch size by
    ``--batch-size``, its images by the options that draw them); one the command has no
    option for keeps ``fit``'s name.
    """
    from ctc_plugin.wording import counted

    drawn_by = {
        "train": ("training", "--split, --train-size, --two-object-fraction"),
        "val": ("validation", "--split, --val-size"),
    }
    parts = []
    for name, there, now in error.differences:
        which, options = drawn_by.get(name.split("_")[0], ("", ""))
        if name.endswith("_loader") and isinstance(there, dict) and isinstance(now, dict):
            for key in sorted(set(there) | set(now), key=str):
                if there.get(key) == now.get(key):
                    continue
                if key == "batch_size":
                    parts.append(f"--batch-size: {there[key]} there, {now[key]} now")
                elif key == "length":
                    parts.append(f"{which} images: {there[key]} there, {now[key]} now ({options})")
                else:
                    parts.append(f"{name} {key}: {there.get(key)!r} there, {now.get(key)!r} now")
        elif name == "architecture":
            parts.append(
                f"the explainer's layers (--backbone, --width, --depth; --model for --backbone "
                f"classifier): {counted(len(there), 'tensor')} differ in name or shape"
            )
        elif name.endswith("_data"):  # a count that differs already names the images
            if not any(p.startswith(f"{which} images") for p in parts):
                parts.append(f"other {which} images ({options})")
        else:
            parts.append(f"{RESUME_OPTIONS.get(name, name)}: {there!r} there, {now!r} now")
    return (
        f"argument --resume: {resume} was trained with other options "
        f"({'; '.join(dict.fromkeys(parts))}); give the options the run was started with (and "
        "more --epochs), or train afresh without --resume"
    )


def _train_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--out`` and ``--checkpoint`` of ``explainer train``, defaults filled in and checked.

    A default is checked as a given path is; either is refused where it names the same file as
    the other output or an input (``--resume``, ``--weights``), before anything is loaded.
    """
    out = args.out or checked("--out", output_file, f"explainer-{args.model}-{args.split}.pt")
    checkpoint = args.checkpoint or checked("--checkpoint", output_file, f"{out}.ckpt")
    inputs = [("--resume", args.resume), ("--weights", args.weights)]
    check_outputs_spare_inputs(
        "--out", out, "the explainer", [("--checkpoint", checkpoint), *inputs]
    )
    # the checkpoint may be the one --resume names: it continues there
    check_outputs_spare_inputs("--checkpoint", checkpoint, "the checkpoint", inputs[1:])
    _check_checkpoint_is_free(checkpoint, args.resume, given=args.checkpoint is not None)
    return out, checkpoint


def _check_checkpoint_is_free(checkpoint: Path, resume: Path | None, given: bool) -> None:
    """Refuse a checkpoint path that holds a file other than the one ``--resume`` continues.

    Training writes its checkpoint after the first epoch, which would replace an earlier run's
    checkpoint (the default ``OUT.ckpt`` of the same ``--out`` among them) and lose its epochs.

    Raises:
        CLIError: Saying how to continue that run, or to start another elsewhere.
    """
    from ctc_plugin.commands import CLIError

    if not checkpoint.exists() or (resume is not None and same_file(checkpoint, resume)):
        return
    named = "--checkpoint" if given else "--checkpoint (OUT.ckpt by default)"
    raise CLIError(
        f"argument {named}: {checkpoint} already exists (an earlier run's checkpoint?) and "
        f"training would replace it after its first epoch: add --resume {checkpoint} to "
        "continue that run, or give another --checkpoint (or delete the file) to start over"
    )


def _check_image_size(explainer: Explainer, size: int) -> None:
    """Run the new ``explainer`` once on a blank ``size`` x ``size`` image, drawing no image.

    An ``--input-scale`` or ``--depth`` that leaves its network too few pixels is refused at
    once, with the network's own message, not after the training images are drawn. The
    explainer runs in eval mode (no normalisation statistics change) and is left in the mode
    it was in.

    Raises:
        ValueError: Naming the size the network got and what to change.
    """
    import torch

    training = explainer.training
    explainer.eval()
    try:
        with torch.no_grad():
            explainer(torch.zeros(1, explainer.in_channels, size, size))
    finally:
        explainer.train(training)


def run_gate(args: argparse.Namespace) -> int:
    """Build, save and report one gated explainer on ``--threads``; return the exit status."""
    with torch_threads(args.threads) as args.threads:
        return _gate(args)


def _gate(args: argparse.Namespace) -> int:
    """Build, save and report one gated class-specific explainer; return the exit status."""
    import torch

    from ctc_plugin import zoo
    from ctc_plugin.explainer.network import Explainer

    _check_student_options(args)
    out = args.out or checked("--out", output_file, f"explainer-{args.model}-{args.split}-gated.pt")
    check_outputs_spare_inputs(
        "--out", out, "the gated explainer", [("--mask-explainer", args.mask_explainer)]
    )
    classifier = zoo.load(args.model, args.split)
    if args.mask_explainer is not None:
        # a gated file holds a classifier copy: given the architecture it loads, and is then
        # refused below for its backbone instead of with the API's "pass classifier=" hint
        default = Explainer.load(args.mask_explainer, classifier=classifier)
        trained_for = (default.metadata.get("model"), default.metadata.get("split"))
        if None not in trained_for and trained_for != (args.model, args.split):
            raise ValueError(
                f"--mask-explainer {args.mask_explainer} was trained for the {trained_for[0]} "
                f"model of split {trained_for[1]}, not for --model {args.model} --split "
                f"{args.split}: give its --model and --split, or an explainer trained for "
                f"{args.model} ({args.split})"
            )
    else:
        default = zoo.load_explainer(args.model, args.split)
    if default.backbone_name != "unet-small":
        raise ValueError(
            f"the mask explainer must have the 'unet-small' backbone, got "
            f"{default.backbone_name!r}: give a default explainer (`explainer train`), not a "
            "gated one"
        )
    if not default.is_trained:
        raise ValueError("the mask explainer is untrained; train it with `explainer train` first")
    gated, history = _gated_explainer(args, default, classifier)
    with torch.no_grad():
        if args.gate == "student-unet":  # its masks were distilled from the default's
            mask_head = gated.backbone.head
        else:
            gated.backbone.mask.load_state_dict(default.backbone.state_dict())
            mask_head = gated.backbone.mask.head
        mask_head.bias += args.mask_offset
        gated.backbone.sharpness.fill_(args.sharpness)
        gated.backbone.threshold.fill_(args.threshold)
        # the masks are the default explainer's training (copied, or distilled from it): the
        # file counts as trained with its steps, size and classifier; the distillation is in
        # the metadata
        gated.copy_training_record(default)
    words = ["ctc-plugin", "explainer", "gate", "--model", args.model, "--split", args.split]
    if args.mask_explainer is not None:
        words += ["--mask-explainer", str(args.mask_explainer)]
    words += ["--sharpness", str(args.sharpness), "--threshold", str(args.threshold)]
    words += ["--mask-offset", str(args.mask_offset), "--gate", args.gate]
    if args.gate in STUDENT_GATES:
        for flag, *_ in STUDENT_OPTIONS:
            words += [flag, str(getattr(args, _dest(flag)))]
        words += ["--threads", str(args.threads)]  # only training depends on the count
    metadata: dict[str, Any] = {
        "command": shlex.join(words),
        "model": args.model,
        "split": args.split,
        "backbone": gated.backbone_name,
        "mask_explainer_command": default.metadata.get("command"),
        "sharpness": args.sharpness,
        "threshold": args.threshold,
        "mask_offset": args.mask_offset,
        "distillation_loss": history,
        **built_with(),
    }
    if args.gate in STUDENT_GATES:
        metadata["threads"] = args.threads
    gated.save(out, metadata)
    losses = f"; distillation loss {history[0]:.3f} -> {history[-1]:.3f}" if history else ""
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB){losses}")
    return 0


def _gated_explainer(
    args: argparse.Namespace, default: Explainer, classifier: nn.Module
) -> tuple[Explainer, list[float]]:
    """A gated explainer for ``default``'s classes; a student gate's network distilled.

    Its masks still have to be set (the U-Net's from ``default``, except for
    ``--gate student-unet``, whose masks are distilled from ``default``'s). Returns the
    explainer and the distillation losses per epoch (empty for the classifier gate).
    """
    import torch

    from ctc_plugin import zoo
    from ctc_plugin.explainer.backbones import build_backbone
    from ctc_plugin.explainer.network import Explainer

    mask = default.config()  # the default explainer's U-Net, whose masks the gate keeps
    options = {
        "in_channels": default.in_channels,
        "width": mask["width"],
        "depth": mask["depth"],
        "mask_scale": default.input_scale,
    }
    classes = default.num_classes
    head = zoo.HEADS[args.model]
    history: list[float] = []
    if args.gate in STUDENT_GATES:
        from ctc_plugin.explainer.student import distil_class_maps
        from ctc_plugin.explainer.student_unet import distil_student_unet

        torch.manual_seed(args.seed)
        if args.gate == "student-unet":  # one network: class maps and masks from the default's
            backbone = build_backbone(
                "student-unet", classes, in_channels=default.in_channels, width=args.student_width
            )
            gated = Explainer(backbone, classes)
            distil = partial(distil_student_unet, gated.backbone, classifier, head, default)
        else:  # a student of the class maps gates a copy of the default's U-Net
            backbone = build_backbone(
                "student-gated", classes, student_width=args.student_width, **options
            )
            gated = Explainer(backbone, classes)
            distil = partial(distil_class_maps, gated.backbone.encoder, classifier, head)
        history = distil(
            distillation_images(args.split, args.student_images),
            epochs=args.student_epochs,
            batch_size=STUDENT_BATCH,
            seed=args.seed,
            show_progress=not args.no_progress,
        )
    else:
        backbone = build_backbone(
            "classifier-gated", classes, classifier=classifier, head=head, **options
        )
        gated = Explainer(backbone, classes)
    return gated, history


def _check_student_options(args: argparse.Namespace) -> None:
    """Refuse unusable student options before anything is loaded; fill in their defaults."""
    given = [flag for flag, *_ in STUDENT_OPTIONS if getattr(args, _dest(flag)) is not None]
    if args.gate not in STUDENT_GATES:
        if given:
            gates = " and ".join(STUDENT_GATES)
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} to --gate {gates} only")
        return
    for flag, fallback, *_ in STUDENT_OPTIONS:
        if getattr(args, _dest(flag)) is None:
            setattr(args, _dest(flag), fallback)
    count = distillation_image_count(args.split, args.student_images)
    if count < STUDENT_BATCH:
        raise ValueError(
            f"--student-images {args.student_images} gives {count} distillation images on "
            f"split {args.split!r}, fewer than one batch ({STUDENT_BATCH}): use more"
        )


def _dest(flag: str) -> str:
    """The argparse attribute of a ``--long-flag``."""
    return flag.removeprefix("--").replace("-", "_")


def trained_summary(result: FitResult) -> str:
    """The epoch the written explainer holds, with its losses (those of that epoch, not the last).

    E.g. ``best epoch 2 of 3 (the one written), val loss 0.4000, masked-classification loss
    0.1000``.
    """
    best = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
    return (
        f"best epoch {result.best_epoch} of {len(result.history)} (the one written), val loss "
        f"{result.best_loss:.4f}, masked-classification loss {best['classification']:.4f}"
    )


def distillation_image_count(split: str, count: int) -> int:
    """How many images `distillation_images` returns for ``count`` training images."""
    return count + (count // 2 if split == "shapes" else 0)


def distillation_images(split: str, count: int) -> Tensor:
    """Return the student's training images.

    ``count`` training images of the split, plus ``count // 2`` two-object images on the
    ``"shapes"`` split (where a class map must pick one of two objects).
    """
    import torch

    from ctc_plugin.datasets import TRAIN_SEED, ShapesDataset
    from ctc_plugin.explainer.specificity import two_object_training_data

    images, _ = ShapesDataset(split, size=count, seed=TRAIN_SEED).tensors()
    extra = distillation_image_count(split, count) - count
    if extra:
        images = torch.cat([images, two_object_training_data(extra, TWO_OBJECT_SEED)[0]])
    return images


def _preset_name(text: str) -> str:
    """``--preset``: a published preset's name (case and ``_``/``-`` ignored), as it is stored."""
    from ctc_plugin.explainer.presets import PRESETS

    key = text.lower().replace("_", "-")
    if key not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"unknown preset {text!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    return key


def _written_since(path: Path, started: float) -> bool:
    """Whether ``path`` was written at or after ``started`` (a ``time.time()``)."""
    try:
        return path.stat().st_mtime >= started
    except OSError:
        return False


def _resume_hint(checkpoint: Path, started: float) -> str:
    """What to say after Ctrl-C: the checkpoint this run wrote, if it wrote one yet."""
    if not _written_since(checkpoint, started):
        return "; no epoch had finished (nothing to resume)"
    return f"; the finished epochs are in {checkpoint}: add --resume {checkpoint} to continue"
