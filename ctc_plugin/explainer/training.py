"""The training loop of the Explainer: Adam, early stopping, checkpoint and resume."""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ctc_plugin._moved import moved_keywords
from ctc_plugin.canonizers import holds_a_composite
from ctc_plugin.concurrency import exclusive
from ctc_plugin.explainer import losses
from ctc_plugin.explainer.batches import (
    batch_on_device,
    check_loader,
    check_reiterable,
    checked_batch,
)
from ctc_plugin.explainer.checkpoints import (
    ResumeMismatchError,
    check_checkpoint_path,
    check_resumable_loaders,
    check_resume,
    check_resumed_epochs,
    data_digest,
    device_rng_state,
    host_rng_states,
    load_checkpoint,
    loader_generators,
    loader_settings,
    plain_baseline,
    save_checkpoint,
    set_device_rng_state,
    set_host_rng_states,
)
from ctc_plugin.explainer.network import Explainer, classifier_record
from ctc_plugin.explainer.presets import PRESETS, ExplainerHyperparameters
from ctc_plugin.inputs import (
    broadcasts_to,
    check_gradient_weights,
    check_nothing_shared,
    floating_dtype,
    is_finite_number,
    is_integer,
    with_gradients,
)
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.module_state import compiled_code_eager, modes_kept, state_digest, state_dtypes
from ctc_plugin.wording import caller_stacklevel

#: Names of the unweighted loss terms recorded in the history and shown by the progress bar.
TERMS = ("classification", "entropy", "tv", "area", "target_area", "nontarget_area")

#: Short names of the terms in the progress bar.
SHORT = {
    "classification": "cls",
    "entropy": "ent",
    "tv": "tv",
    "area": "area",
    "target_area": "m",
    "nontarget_area": "n",
    "loss": "loss",
}


@dataclass
class FitResult:
    """What [`fit_explainer`][ctc_plugin.explainer.training.fit_explainer] did.

    Attributes:
        history: One dictionary per epoch: ``epoch``, the mean of each unweighted loss term and
            of the weighted ``loss`` over the training batches, and ``val_loss`` when a
            validation loader was given.
        best_epoch: The epoch (1-based) whose weights the explainer holds at the end.
        best_loss: Its monitored loss (validation loss, or training loss without validation).
        stopped_early: Whether early stopping ended training before ``epochs``.
        steps: Optimisation steps taken in total (resumed runs included).
        hyperparameters: The values used.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    stopped_early: bool = False
    steps: int = 0
    hyperparameters: ExplainerHyperparameters = field(default_factory=ExplainerHyperparameters)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False``; restore both on exit.

    The model is held exclusively meanwhile ([`exclusive`][ctc_plugin.concurrency.exclusive]):
    another thread's call of this package (an attribution checking that the model is in eval
    mode) waits until the model is back as it was, instead of seeing it switched.
    """
    with exclusive(model):
        # only the flags that are on are switched, and not those of inference tensors (made
        # under inference mode, which cannot get theirs back outside it, nor enter autograd)
        trainable = [p for p in model.parameters() if p.requires_grad and not p.is_inference()]
        with modes_kept(model):
            try:
                for p in trainable:
                    p.requires_grad_(False)
                model.eval()
                yield model
            finally:
                for p in trainable:
                    p.requires_grad_(True)


class _Restoring:
    """What `restored_on_failure` yields: set ``keep`` to leave the explainer as it is."""

    keep = False


@contextmanager
def restored_on_failure(explainer: nn.Module) -> Iterator[_Restoring]:
    """Put ``explainer`` back as it was when the block raises: weights, buffers, modes, grads.

    A training run that fails half-way (a loss that turns NaN, a validation batch refused after
    an epoch) has already stepped the optimiser and recorded steps, the image size and the
    classifier in buffers: without this the explainer would hold the diverged weights and still
    say it was trained. The block sets ``keep`` on what this yields to leave the explainer as
    the block left it (an interrupted run that settled on its best finished epoch).
    """
    state = copy.deepcopy(explainer.state_dict())
    modes = [(m, m.training) for m in explainer.modules()]
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in explainer.parameters()]
    restoring = _Restoring()
    try:
        yield restoring
    except BaseException:
        if restoring.keep:
            raise
        with torch.no_grad():
            explainer.load_state_dict(state)
        for m, mode in modes:
            m.training = mode
        for p, grad in grads:
            p.grad = grad
        raise


def class_scores(output: Any, num_classes: int) -> Tensor:
    """Return the classifier's ``output`` if it is a tensor of class scores ``(N, num_classes)``.

    Raises:
        ValueError: For anything else (a tuple or dict of outputs, another class count), saying
            what to pass instead.
    """
    if not isinstance(output, Tensor):
        raise ValueError(
            f"the classifier returned a {type(output).__name__}, not a tensor of class scores "
            "(N, classes); fit needs an nn.Module whose forward returns the scores alone: wrap "
            "the model in one (its forward returning model(x)[0], or model(x)['logits'])"
        )
    trailing_ones = output.dim() > 2 and all(size == 1 for size in output.shape[2:])
    if trailing_ones and output.shape[1] == num_classes:
        raise ValueError(
            f"the classifier returns outputs shaped {tuple(output.shape)}: {num_classes} class "
            "scores per example with dimensions of size 1 after them (a head that ends in a "
            "1 x 1 convolution); fit needs (N, classes): wrap the model so that its forward "
            "returns model(x).flatten(1)"
        )
    if output.dim() != 2 or output.shape[1] != num_classes:
        raise ValueError(
            f"class-count mismatch: the explainer has {num_classes} classes but the "
            f"classifier returns outputs shaped {tuple(output.shape)}; build the Explainer with "
            "num_classes equal to the classifier's number of outputs"
        )
    return output


def _warn_if_probabilities(scores: Tensor, multilabel: bool = False) -> None:
    """Warn when the classifier's ``scores`` look like probabilities rather than logits.

    The objective takes logits: it applies the softmax (the sigmoid, for multi-label targets)
    itself. Probabilities given as scores are squashed a second time, which flattens the
    entropy term (the inverse-masked image then looks uncertain whatever the mask leaves out)
    and the classification term, and trains masks that keep too much. Softmax outputs are
    rows that are non-negative and sum to 1; with multi-label targets, sigmoid outputs are
    scores that all lie in [0, 1].
    """
    detached = scores.detach()
    if not len(detached) or not bool((detached >= 0).all()):
        return
    if multilabel and bool((detached <= 1).all()):
        warnings.warn(
            "the classifier's outputs all lie in [0, 1] with multi-label targets: they look "
            "like sigmoid probabilities, and the explainer objective takes logits (it applies "
            "the sigmoid itself, in its binary cross-entropy); train against the model "
            "without its final sigmoid",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
        return
    sums = detached.sum(dim=1, dtype=torch.float64)
    if bool(((sums - 1).abs() < 1e-4).all()):
        warnings.warn(
            "the classifier's outputs are non-negative and sum to 1 in every row: they look "
            "like probabilities, and the explainer objective takes logits (it applies the "
            "softmax itself); train against the model without its final softmax",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def _check_baseline_fits(baseline: Tensor, images: Tensor) -> None:
    """Raise a ``ValueError`` unless the tensor ``baseline`` broadcasts to the ``images``."""
    if not broadcasts_to(baseline.shape, images.shape):
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images' shape "
            f"{tuple(images.shape)}: give a number, a per-channel tensor "
            f"({images.shape[1]}, 1, 1) or one image ({', '.join(map(str, images.shape[1:]))})"
        )


def objective(
    explainer: Explainer,
    classifier: nn.Module,
    images: Tensor,
    targets: Tensor,
    multilabel: bool,
    hp: ExplainerHyperparameters,
    baseline: float | Tensor = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute the weighted Explainer loss of one batch and its unweighted terms.

    The classifier sees the masked and the inverse-masked images in one batched call, in its
    own dtype (a float64 classifier trains a float32 explainer); its scores are taken in the
    explainer's dtype.

    Returns:
        ``(loss, terms)`` with ``terms`` keyed by [`TERMS`][ctc_plugin.explainer.training.TERMS].
    """
    if isinstance(baseline, Tensor):
        _check_baseline_fits(baseline, images)
        baseline = baseline.to(images.device)  # given on the CPU, the batches on a GPU
    logits = explainer(images)
    m, n = losses.target_masks(logits, targets)
    both = torch.cat(
        [losses.apply_mask(images, m, baseline), losses.apply_mask(images, 1 - m, baseline)]
    )
    dtype = floating_dtype(classifier)
    with compiled_code_eager():  # a classifier compiled in place: the model's numbers
        output = classifier(both if dtype is None else both.to(dtype))
    scores = class_scores(output, explainer.num_classes)
    _warn_if_probabilities(scores, multilabel)
    masked, inverse = scores.to(logits.dtype).chunk(2)
    terms = {
        "classification": losses.classification_loss(masked, targets, multilabel),
        "entropy": losses.entropy_loss(inverse),
        "tv": losses.total_variation(m) + losses.total_variation(n),
        "area": losses.area_loss(logits, targets, hp.a_min, hp.a_max),
        "target_area": losses.mean_area(m),
        "nontarget_area": losses.mean_area(n),
    }
    loss = (
        terms["classification"]
        + hp.entropy_weight * terms["entropy"]
        + hp.tv_weight * terms["tv"]
        + hp.area_weight * terms["area"]
        + hp.target_area_weight * terms["target_area"]
        + hp.nontarget_area_weight * terms["nontarget_area"]
    )
    return loss, terms


def _read_loss(loss: Tensor, terms: dict[str, Tensor], where: str) -> dict[str, float]:
    """The batch's loss and terms as numbers (one transfer from the device); raise if not finite.

    A NaN or infinite loss would make every later monitored loss NaN and leave the explainer with
    its initial weights; stopping names the batch and the terms that are not finite instead.

    Raises:
        ValueError: The loss is NaN or infinite.
    """
    values = torch.stack([loss.detach().double(), *(v.detach().double() for v in terms.values())])
    read = dict(zip(("loss", *terms), values.tolist(), strict=True))
    if math.isfinite(read["loss"]):
        return read
    bad = [name for name in terms if not math.isfinite(read[name])]
    raise ValueError(
        f"the explainer loss of {where} is {read['loss']} (non-finite terms: "
        f"{', '.join(bad) or 'none; the weighted sum overflowed'}): the classifier's outputs "
        "or the baseline hold NaN or infinite values, or training diverged (lower the learning "
        "rate)"
    )


def _evaluate(
    explainer: Explainer,
    classifier: nn.Module,
    loader: Iterable[Any],
    hp: ExplainerHyperparameters,
    multilabel: bool | None,
    baseline: float | Tensor,
) -> float:
    """Mean weighted loss over a loader, without gradients."""
    explainer.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for index, batch in enumerate(loader):
            where = f"validation batch {index}"
            images, targets, multi = batch_on_device(batch, explainer, multilabel, where)
            loss, terms = objective(explainer, classifier, images, targets, multi, hp, baseline)
            total += _read_loss(loss, terms, where)["loss"] * len(images)
            count += len(images)
    if count == 0:
        raise ValueError("the validation loader yielded no batches")
    return total / count


def _check_validation(
    loader: Iterable[Any], num_classes: int, multilabel: bool | None, channels: int
) -> None:
    """Raise before training unless ``loader`` yields finite images and valid labels.

    Every batch is read once, so that a bad validation loader fails the call before the first
    epoch changes the explainer.
    """
    count = 0
    for index, batch in enumerate(loader):
        checked_batch(batch, num_classes, multilabel, channels, f"validation batch {index}")
        count += 1
    if count == 0:
        raise ValueError(
            "the validation loader yielded no batches; give one with data, or val_loader=None "
            "to monitor the training loss"
        )


def _check_loop_settings(
    epochs: Any,
    patience: Any,
    max_steps_per_epoch: Any,
    min_delta: Any,
    seed: Any,
    multilabel: Any,
) -> None:
    """Raise a clear error for a training-loop setting that cannot mean what it says."""
    for name, value in (("epochs", epochs), ("patience", patience)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_steps_per_epoch is not None and (
        not is_integer(max_steps_per_epoch) or max_steps_per_epoch < 1
    ):
        raise ValueError(
            f"max_steps_per_epoch must be an integer >= 1 or None (every batch), got "
            f"{max_steps_per_epoch!r}"
        )
    if not is_finite_number(min_delta) or min_delta < 0:
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    if seed is not None and not is_integer(seed):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if multilabel is not None and not isinstance(multilabel, bool):
        raise ValueError(f"multilabel must be True, False or None, got {multilabel!r}")


def _record_image_size(explainer: Explainer, images: Tensor) -> None:
    """Record the size of the images ``explainer`` trains on; ``-1 x -1`` once sizes differ.

    [`trained_image_size`][ctc_plugin.Explainer.trained_image_size] is then ``None`` and the
    explainer explains every size, since it was trained on several.
    """
    size = list(images.shape[-2:])
    recorded = explainer.image_size.tolist()  # one read of the (device) buffer
    if recorded[0] == 0:
        explainer.image_size.copy_(torch.tensor(size))
    elif recorded[0] > 0 and recorded != size:
        explainer.image_size.fill_(-1)


@moved_keywords(
    config=(ExplainerHyperparameters, "config"),
    hints={
        "preset": "pass the preset's hyper-parameters as config=get_preset(name) "
        "(ctc_plugin.explainer.presets)",
        "progress": "the progress bar is show_progress= now (as in Captum and every other "
        "ctc_plugin call)",
    },
)
@with_gradients
def fit_explainer(
    explainer: Explainer,
    classifier: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    config: ExplainerHyperparameters = PRESETS["default"],
    *,
    epochs: int = 10,
    max_steps_per_epoch: int | None = None,
    patience: int = 3,
    min_delta: float = 0.0,
    seed: int | None = None,
    checkpoint: str | Path | None = None,
    resume: str | Path | None = None,
    baseline: float | Tensor = 0.0,
    multilabel: bool | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train ``explainer`` against the frozen ``classifier`` (Stalder et al., NeurIPS 2022).

    The objective's hyper-parameters (learning rate, loss weights, area bounds) are one
    [`ExplainerHyperparameters`][ctc_plugin.explainer.presets.ExplainerHyperparameters],
    ``config``; its defaults are the published ones (``lr=1e-5``, ``entropy_weight=1``,
    ``tv_weight=1``, ``area_weight=1``, ``target_area_weight=0.1``,
    ``nontarget_area_weight=0.3``, ``a_min=0.05``, ``a_max=0.3``), and
    [`get_preset`][ctc_plugin.explainer.presets.get_preset] returns the published settings of
    other classifiers and datasets. The keyword arguments are the training loop's (epochs,
    early stopping, checkpoints, data handling), not the objective's.

    Examples:
        >>> import dataclasses
        >>> from ctc_plugin.explainer.presets import ExplainerHyperparameters, get_preset
        >>> mine = ExplainerHyperparameters(lr=1e-2, tv_weight=0.5)
        >>> dataclasses.replace(get_preset("resnet50-voc"), lr=1e-3).entropy_weight
        3.0

    The classifier is put in eval mode with ``requires_grad=False`` for the duration and
    restored afterwards, also when training fails; only the explainer's parameters are given to
    Adam. The images are used as they come (masking blends towards ``baseline``). The call
    trains with gradients on, also inside ``torch.no_grad()`` or ``torch.inference_mode()``.

    Args:
        explainer: The explainer to train (in place).
        classifier: The model to explain, on the explainer's device, returning ``(N, C)``
            logits.
        train_loader: Batches of dicts with ``"image"`` ``(N, 3, H, W)`` and ``"label"``, or
            ``(image, label)`` tuples. Labels are class indices ``(N,)`` (single-label,
            cross-entropy) or multi-hot ``(N, C)`` (multi-label, binary cross-entropy). It is
            read once per epoch: a one-shot iterator (a generator) only with ``epochs=1``. The
            explainer records the images' size
            ([`trained_image_size`][ctc_plugin.Explainer.trained_image_size]; ``None`` after
            images of several sizes).
        val_loader: Batches monitored for early stopping; the training loss is monitored
            without it. It is read before training (its images and labels are checked) and
            once per epoch, so it cannot be a one-shot iterator.
        config: The objective's hyper-parameters (default: the published defaults).
        epochs: Largest number of epochs (counted over a resumed run too).
        max_steps_per_epoch: Stop each epoch after this many batches (``None``: all).
        patience: Epochs without an improvement larger than ``min_delta`` before stopping.
        min_delta: Smallest decrease of the monitored loss that counts as an improvement.
        seed: Seeds torch's random generator before training, so a run (initialisation
            excluded: seed before building the explainer) and a loader that shuffles with
            torch's default generator repeat exactly.
        checkpoint: File written after every epoch (weights, optimiser, RNG, history).
        resume: Checkpoint to continue from, written for an explainer of the same
            architecture and trained against the same classifier (equal parameters and
            buffers in the same dtype, a ``nn.DataParallel`` or ``torch.compile`` wrapper
            aside: checkpoints record a SHA-256 digest of the classifier's state dict and its
            dtypes; those written before it was recorded are not checked for the classifier).
            It must have
            the same hyper-parameters, thread count
            (``torch.get_num_threads()``) and training settings (``baseline``,
            ``max_steps_per_epoch``, ``patience``, ``min_delta``, ``seed`` (when given),
            ``multilabel``, the explainer's ``input_scale``,
            whether there is a validation loader, and each loader's batch size, data length,
            sampler, ``drop_last``, own random generators, whose states the checkpoints
            hold, and the tensors of a ``TensorDataset``, by digest): everything the result
            depends on, so that the resumed run equals an uninterrupted one. ``epochs`` may
            grow, not shrink below the epochs the checkpoint holds.
        baseline: Value the masked-out pixels blend towards (0, as the original).
        multilabel: Force single- (False: cross-entropy; multi-hot labels must then hold one
            class per image) or multi-label (True: binary cross-entropy, class indices too)
            targets; ``None`` infers it from the labels' shape.
        show_progress: Show a tqdm bar with the loss terms.

    Returns:
        The history and the epoch whose weights the explainer holds (the best one). Ctrl-C
        (``KeyboardInterrupt``) is re-raised after the explainer settles on the best finished
        epoch, as a run that stopped there returns it (during the first epoch: put back as it
        was).

    Raises:
        TypeError: If a loader is not an iterable of batches (a dataset of single examples,
            one ``(images, labels)`` pair, the config given as ``val_loader``), if
            ``classifier`` is not an ``nn.Module``, if ``config`` is not an
            ``ExplainerHyperparameters`` (a preset name: pass ``get_preset(name)``), or for a
            keyword argument this function no longer takes (``lr=``, the loss weights and area
            bounds are fields of the config; ``preset=`` is ``config=get_preset(name)``).
        ValueError: For a classifier or explainer whose weights are inference tensors (built or
            loaded under ``torch.inference_mode()``: autograd cannot use them), a class-count
            mismatch, bad labels, settings that are not what they
            should be (``epochs``, ``patience`` and ``max_steps_per_epoch`` integers >= 1,
            ``min_delta`` finite and >= 0, ``seed`` an integer), images that are not a finite
            floating-point batch or a loss that is NaN or infinite (the message names the
            batch; the explainer is then put back as it was before the call), an empty
            validation loader or one with bad images or labels (checked before training), a
            one-shot iterator that would be read more than once, a ``checkpoint`` path that
            is a folder, an explainer that shares a parameter or a BatchNorm (a module that
            changes in training mode) with the classifier (build it from a copy), or a
            checkpoint made with other hyper-parameters or
            settings, for another architecture or against another classifier, or holding
            more epochs than ``epochs`` (the message names what differs; the explainer is left
            unchanged). Other settings or hyper-parameters, and another architecture, raise
            [`ResumeMismatchError`][ctc_plugin.explainer.checkpoints.ResumeMismatchError], a
            ``ValueError`` that lists them.
        RuntimeError: A Zennit composite is registered on the classifier (inside ``with
            composite.context(classifier)``): its rules replace the gradients the masks are
            trained through. Nothing has run; call outside the block.
    """
    if not isinstance(config, ExplainerHyperparameters):
        hint = (
            f"get_preset({config!r})"
            if isinstance(config, str)
            else "ExplainerHyperparameters(lr=...)"
        )
        raise TypeError(
            f"config must be an ExplainerHyperparameters, got {type(config).__name__}; pass "
            f"config={hint}"
        )
    hp = config
    if not isinstance(classifier, nn.Module):
        raise TypeError(
            f"classifier must be an nn.Module (it is frozen for the training), got "
            f"{type(classifier).__name__}"
        )
    classifier = unwrapped(classifier)  # the model inside torch's wrappers
    check_gradient_weights(classifier, "Explainer.fit")  # the masks' gradients flow through it
    check_gradient_weights(explainer, "Explainer.fit (training the explainer)")
    if holds_a_composite(classifier, canonizers=False):
        raise RuntimeError(
            "a Zennit composite is registered on the classifier (an open `with "
            "composite.context(classifier)` or a Zennit attributor's `with` block): its rules "
            "replace the gradients through which the explainer's masks are trained; call "
            "Explainer.fit outside that block"
        )
    check_nothing_shared(
        explainer,
        classifier,
        "the explainer",
        "the classifier",
        'build_backbone("classifier", num_classes, classifier=model, head=...) copies the '
        "whole classifier itself",
    )
    _check_loop_settings(epochs, patience, max_steps_per_epoch, min_delta, seed, multilabel)
    if (isinstance(baseline, Tensor) and not bool(torch.isfinite(baseline).all())) or (
        not isinstance(baseline, Tensor)
        and (not isinstance(baseline, numbers.Real) or not math.isfinite(baseline))
    ):
        raise ValueError(
            f"baseline must be a finite number or a tensor broadcastable to the images, got "
            f"{baseline!r}"
        )
    check_loader(train_loader, "train_loader")
    check_reiterable(train_loader, "train_loader", epochs)
    check_checkpoint_path(checkpoint)
    if checkpoint is not None or resume is not None:
        check_resumable_loaders([train_loader, val_loader])
    if val_loader is not None:
        check_loader(val_loader, "val_loader")
        check_reiterable(val_loader, "val_loader", 2)
        _check_validation(val_loader, explainer.num_classes, multilabel, explainer.in_channels)
    settings = {
        "baseline": plain_baseline(baseline),
        "max_steps_per_epoch": max_steps_per_epoch,
        "patience": patience,
        "min_delta": min_delta,
        "seed": seed,
        "multilabel": multilabel,
        "input_scale": explainer.input_scale,  # not in the state dict: weights fit one scale
        "train_loader": loader_settings(train_loader),
        "val_loader": None if val_loader is None else loader_settings(val_loader),
    }
    if checkpoint is not None or resume is not None:  # the loaders' tensors (a TensorDataset's)
        settings["train_data"] = data_digest(train_loader)
        settings["val_data"] = None if val_loader is None else data_digest(val_loader)
    optimizer = torch.optim.Adam(explainer.parameters(), lr=hp.lr)
    result = FitResult(hyperparameters=hp)
    # The classifier is recorded on the explainer, and checked against checkpoints.
    digest, dtypes, state = state_digest(classifier), state_dtypes(classifier), None
    recorded = classifier_record(classifier, digest)  # what the explainer records of it
    if resume is not None:
        state = load_checkpoint(resume)
        check_resume(state, explainer, settings, resume, digest, dtypes)
        check_resumed_epochs(state, epochs, resume)
        if seed is None:  # the run keeps the seed it started with
            settings["seed"] = state.get("settings", {}).get("seed")
        if state["hyperparameters"] != hp.as_dict():
            differ = [
                (k, state["hyperparameters"].get(k), v)
                for k, v in sorted(hp.as_dict().items())
                if state["hyperparameters"].get(k) != v
            ]
            listed = "; ".join(f"{k}: {there!r} there, {now!r} now" for k, there, now in differ)
            error = ResumeMismatchError(
                f"checkpoint {str(resume)!r} was trained with other hyper-parameters "
                f"({listed}); resume with the same settings"
            )
            error.differences = tuple(differ)
            raise error
        threads = state.get("threads", torch.get_num_threads())  # older checkpoints: unknown
        if threads != torch.get_num_threads():
            raise ValueError(
                f"checkpoint {str(resume)!r} was trained on {threads} CPU threads, this run has "
                f"{torch.get_num_threads()}: resume on {threads} (torch.set_num_threads, "
                "--threads) so that the result equals an uninterrupted run"
            )
    # Both models are held exclusively while they change (the classifier first, as the
    # attributions take them): no other thread's call sees either half-way.
    generators = loader_generators(train_loader)
    generators += [] if val_loader is None else loader_generators(val_loader)
    with (
        frozen(classifier),
        exclusive(explainer),
        restored_on_failure(explainer) as restoring,
    ):
        if state is not None:
            start_epoch, bad_epochs, best_state = _continue_from(
                state, explainer, optimizer, result, generators
            )
        else:
            start_epoch, bad_epochs, best_state = 0, 0, copy.deepcopy(explainer.state_dict())
            if seed is not None:
                torch.manual_seed(seed)
        try:
            for epoch in range(start_epoch, epochs):
                if bad_epochs >= patience:
                    result.stopped_early = True
                    break
                record = _train_epoch(
                    explainer, classifier, train_loader, optimizer, hp, epoch, epochs,
                    max_steps_per_epoch, baseline, multilabel, show_progress,
                )  # fmt: skip
                explainer.record_classifier(classifier, recorded)  # in its best state too
                if val_loader is not None:
                    record["val_loss"] = _evaluate(
                        explainer, classifier, val_loader, hp, multilabel, baseline
                    )
                monitored = record.get("val_loss", record["loss"])
                result.history.append(record)
                if monitored < result.best_loss - min_delta:
                    result.best_loss, result.best_epoch, bad_epochs = monitored, epoch + 1, 0
                    best_state = copy.deepcopy(explainer.state_dict())
                else:
                    bad_epochs += 1
                if checkpoint is not None:
                    save_checkpoint(
                        Path(checkpoint),
                        {
                            "epoch": epoch + 1,
                            "explainer": explainer.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "rng": torch.get_rng_state(),
                            "loader_rng": [generator.get_state() for generator in generators],
                            "host_rng": host_rng_states(),
                            "device_rng": device_rng_state(explainer),
                            "best_state": best_state,
                            "best_epoch": result.best_epoch,
                            "best_loss": result.best_loss,
                            "bad_epochs": bad_epochs,
                            "history": result.history,
                            "hyperparameters": hp.as_dict(),
                            "threads": torch.get_num_threads(),  # the sums' order depends on it
                            "settings": settings,
                            "classifier_digest": digest,
                            "classifier_dtypes": dtypes,
                        },
                    )
            result.steps = _settle(explainer, optimizer, best_state, classifier, recorded, hp)
        except KeyboardInterrupt:
            # Ctrl-C keeps the work of the finished epochs: the explainer settles on the best
            # of them, as a run that stopped there would have returned it (kept only once it
            # has settled: an interrupt during the settling puts it back as it was)
            if result.history:
                _settle(explainer, optimizer, best_state, classifier, recorded, hp)
                restoring.keep = True
            raise
    return result


def _settle(
    explainer: Explainer,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, Tensor],
    classifier: nn.Module,
    recorded: Any,
    hp: ExplainerHyperparameters,
) -> int:
    """Load the best epoch's weights into ``explainer``, in eval mode; return its steps.

    The steps count every optimiser step taken, also after the best epoch. Its ``metadata``
    becomes this training's hyper-parameters: what an earlier training or file recorded (a
    command, a data set) no longer describes the weights.
    """
    explainer.metadata = {"hyperparameters": hp.as_dict()}
    optimizer.zero_grad(set_to_none=True)
    steps = int(explainer.trained_steps)
    explainer.load_state_dict(best_state)
    explainer.record_classifier(classifier, recorded)  # also where the best state predates it
    explainer.trained_steps.fill_(max(steps, int(explainer.trained_steps)))
    explainer.eval()
    return int(explainer.trained_steps)


def _continue_from(
    state: dict[str, Any],
    explainer: Explainer,
    optimizer: torch.optim.Optimizer,
    result: FitResult,
    generators: list[torch.Generator],
) -> tuple[int, int, dict[str, Tensor]]:
    """Load a checked checkpoint ``state``; return ``(start_epoch, bad_epochs, best_state)``.

    The explainer, the optimiser, torch's random generator (and NumPy's and Python's, and the
    GPU's the explainer trains on, where the checkpoint holds them), the loaders' own
    ``generators`` and ``result``'s history and best epoch continue where the checkpointed run
    stopped.
    """
    explainer.load_state_dict(state["explainer"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    for generator, generator_state in zip(generators, state.get("loader_rng", [])):
        generator.set_state(generator_state)
    if "host_rng" in state:  # checkpoints of earlier versions hold torch's alone
        set_host_rng_states(state["host_rng"])
    set_device_rng_state(explainer, state.get("device_rng"))
    result.history = list(state["history"])
    result.best_epoch, result.best_loss = int(state["best_epoch"]), float(state["best_loss"])
    return int(state["epoch"]), int(state["bad_epochs"]), state["best_state"]


def _train_epoch(
    explainer: Explainer,
    classifier: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    hp: ExplainerHyperparameters,
    epoch: int,
    epochs: int,
    max_steps: int | None,
    baseline: float | Tensor,
    multilabel: bool | None,
    show_progress: bool,
) -> dict[str, float]:
    """Run one epoch of Adam steps; return the epoch's mean loss terms."""
    explainer.train()
    sums = dict.fromkeys((*TERMS, "loss"), 0.0)
    count = 0
    bar = tqdm(loader, desc=f"explainer epoch {epoch + 1}/{epochs}", disable=not show_progress)
    for step, batch in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        where = f"training batch {step} of epoch {epoch + 1}"
        images, targets, multi = batch_on_device(batch, explainer, multilabel, where)
        loss, terms = objective(explainer, classifier, images, targets, multi, hp, baseline)
        read = _read_loss(loss, terms, where)  # the step's one wait for the device
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        explainer.trained_steps += 1
        _record_image_size(explainer, images)
        n = len(images)
        count += n
        for key, value in read.items():
            sums[key] += value * n
        bar.set_postfix({SHORT[k]: f"{v / count:.3g}" for k, v in sums.items()}, refresh=False)
    bar.close()
    if count == 0:
        raise ValueError("the training loader yielded no batches")
    return {"epoch": float(epoch + 1), **{k: v / count for k, v in sums.items()}}
