"""Threads: every public attribution class on one model shared by several threads (issue 20).

Each class is called from several threads at once on one shared model, both through one shared
instance and through one instance per call, with a different input, target and feature mask in
every call. Every result must equal, bit for bit, what the same call returns when the calls run
one after the other, and the model must be left exactly as it was (tensors, modes, no hooks, no
shadowed attributes). A barrier starts the threads together so that the calls overlap.

The lock behind it (:mod:`ctc_plugin.concurrency`) is tested on its own at the end: readers
overlap, a writer excludes everyone, re-entrance, two readers that both need to write, and
module hooks that ignore other threads' passes.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin import (
    CTC,
    CTCAttributor,
    CTCComposite,
    Explainer,
    ExplainerAttribution,
    IntegrativeCAM,
)
from ctc_plugin.canonizers import PositiveEpsMergeBatchNorm
from ctc_plugin.concurrency import CallScope, ModelLock, PerThread, exclusive, lock_for, shared
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.features import GridSegmenter
from ctc_plugin.features.relevance import zennit_relevance
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

THREADS = 4
CALLS = 12  # three per thread
SIZE = 16
CLASSES = 4
TIMEOUT = 120.0  # seconds before a thread that has not finished counts as a deadlock


# ---------------------------------------------------------------------------- helpers
def cnn(seed: int = 3) -> RandomCNN:
    """BatchNorm, residual adds and an input normalisation written as tensor arithmetic."""
    return RandomCNN(CNNSpec(residual=True, normalise=True, classes=CLASSES), seed=seed)


def vit() -> nn.Module:
    """The zoo's ViT, tiny: torchvision encoder blocks that IntegrativeCAM finds by itself."""
    from ctc_plugin.zoo.models import SmallViT

    torch.manual_seed(0)
    return SmallViT(CLASSES, image_size=SIZE, dim=8, depth=2, heads=2).eval()


def examples(count: int = CALLS) -> list[tuple[torch.Tensor, Any, torch.Tensor]]:
    """``(images, target, feature mask)`` per call: every call has its own of each."""
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        images = torch.rand(2, 3, SIZE, SIZE, generator=g)
        target = [i % CLASSES, (i + 1) % CLASSES] if i % 3 else i % CLASSES
        features = 3 + i % 5
        mask = random_partition(SIZE, SIZE, features, seed=i, batch=2 if i % 2 else 1)
        out.append((images, target, mask))
    return out


def instances(make: Callable[[], Any], one_instance: bool) -> Callable[[], Any]:
    """The same object for every call, or a new one per call."""
    if not one_instance:
        return make
    shared_instance = make()
    return lambda: shared_instance


def run_in_threads(calls: Sequence[Callable[[], Any]], threads: int = THREADS) -> list[Any]:
    """Run ``calls[i]`` on thread ``i % threads``, the threads started together; results in order.

    Raises the first error of any thread; a thread still running after :data:`TIMEOUT` fails
    the test as a deadlock.
    """
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            barrier.wait(timeout=TIMEOUT)
            for i in range(first, len(calls), threads):
                results[i] = calls[i]()
        except BaseException as error:  # handed to the test's thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT)
    assert not any(worker.is_alive() for worker in workers), "threads still waiting: a deadlock"
    if errors:
        raise errors[0]
    return results


def assert_identical(actual: Any, expected: Any, where: str = "result") -> None:
    """Tensors, arrays, dataclasses and containers equal bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), f"{where}: differs by {_gap(actual, expected)}"
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.shape == expected.shape, where
        assert np.array_equal(actual, expected), where
    elif dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for field in dataclasses.fields(expected):
            assert_identical(
                getattr(actual, field.name), getattr(expected, field.name), f"{where}.{field.name}"
            )
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def state(*models: nn.Module) -> list[Any]:
    """Everything a call must leave as it was: tensors (by identity and value), modes, hooks,
    instance attributes (a bias shadowed by None would show there), BatchNorm ``eps``."""
    out = []
    for model in models:
        for name, module in model.named_modules():
            hooks = [
                len(getattr(module, kind, {}))
                for kind in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                )
            ]
            tensors = [
                (key, id(t), t.detach().clone())
                for key, t in (*module._parameters.items(), *module._buffers.items())
                if t is not None
            ]
            registered = {**module._parameters, **module._buffers}
            public = sorted(  # zennit 1.0 leaves harmless entries holding the very same tensor
                key
                for key, value in vars(module).items()
                if not key.startswith("_") and not (key in registered and value is registered[key])
            )
            out.append((name, module.training, hooks, tensors, public, getattr(module, "eps", 0)))
    return out


def check_threads(models: Sequence[nn.Module], calls: Sequence[Callable[[], Any]]) -> None:
    """Sequential results first, then the same calls from several threads: identical results,
    and the models as they were."""
    before = state(*models)
    expected = [call() for call in calls]
    actual = run_in_threads(calls)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_identical(a, e, f"call {i}")
    after = state(*models)
    assert len(after) == len(before)
    for (name, *was), (_, *now) in zip(before, after):
        training, hooks, tensors, public, eps = was
        assert now[0] == training, f"{name}: training flag changed"
        assert now[1] == hooks, f"{name}: hooks left behind"
        assert [(k, i) for k, i, _ in now[2]] == [(k, i) for k, i, _ in tensors], name
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(now[2], tensors)), name
        assert now[3] == public, f"{name}: attributes changed"
        assert now[4] == eps, f"{name}: eps changed"


# ---------------------------------------------------------------------------- CTC (Captum)
@pytest.mark.parametrize("sharing", ["reference", "proportional", "none"])
@pytest.mark.parametrize("one_instance", [True, False], ids=["one-instance", "instance-per-call"])
def test_ctc(sharing: str, one_instance: bool) -> None:
    model = cnn()
    ctc = instances(lambda: CTC(model, bias_sharing=sharing), one_instance)

    def call(images, target, mask):
        return ctc().attribute(images, target=target, feature_mask=mask, return_feature_scores=True)

    check_threads([model], [partial(call, *example) for example in examples()])


def test_ctc_with_a_zennit_composite_inside() -> None:
    """Pixel-level CTC with a Zennit composite changes the model during the call."""
    from zennit.composites import EpsilonPlusFlat

    from ctc_plugin import distribute_within_features

    model = cnn(seed=5)
    ctc = CTC(model, bias_sharing="proportional")
    composite = EpsilonPlusFlat()  # one composite object shared by every thread too

    def call(images, target, mask):
        _, scores = ctc.attribute(images, target, feature_mask=mask, return_feature_scores=True)
        return distribute_within_features(images, scores, composite, model=model)

    check_threads([model], [partial(call, *example) for example in examples(8)])


def test_ctc_whose_segmenter_changes_the_model() -> None:
    """A call that reads the model runs a nested call that changes it (Zennit relevance in the
    segmenter), in every thread at once: no deadlock, and the sequential results."""
    from zennit.composites import EpsilonPlusFlat

    model = cnn(seed=6)

    def segmenter(images: torch.Tensor) -> torch.Tensor:
        # registers the composite on the model, holding it exclusively
        relevance = zennit_relevance(model, images, composite=EpsilonPlusFlat())
        cells = 2 + int(relevance.abs().sum() > 0)
        rows = torch.arange(SIZE) * cells // SIZE
        return (rows.view(-1, 1) * cells + rows.view(1, -1)).expand(len(images), 1, SIZE, SIZE)

    ctc = CTC(model, segmenter=segmenter, bias_sharing="reference")
    calls = [partial(ctc.attribute, images, target=target) for images, target, _ in examples(8)]
    check_threads([model], calls)


# ---------------------------------------------------------------------------- CTCAttributor
@pytest.mark.parametrize("canonizer", [False, True], ids=["plain", "merged-batchnorm"])
@pytest.mark.parametrize("one_instance", [True, False], ids=["one-instance", "instance-per-call"])
def test_ctc_attributor(canonizer: bool, one_instance: bool) -> None:
    model = cnn(seed=4)

    def make() -> CTCAttributor:
        canonizers = [PositiveEpsMergeBatchNorm()] if canonizer else None
        composite = CTCComposite(bias_sharing="reference", canonizers=canonizers)
        return CTCAttributor(model, composite)

    attributor = instances(make, one_instance)

    def call(images, target, mask):
        weights = torch.zeros(len(images), CLASSES)
        weights[torch.arange(len(images)), torch.as_tensor(target).expand(len(images))] = 1.0
        chosen = attributor()
        output, relevance = chosen(images, weights, feature_mask=mask)
        return output, relevance, chosen.feature_scores  # this thread's scores

    check_threads([model], [partial(call, *example) for example in examples()])


def test_every_method_at_once_on_one_model() -> None:
    """CTC, CTCAttributor, IntegrativeCAM and its grad-cam face interleaved on one model."""
    gradcam = pytest.importorskip("ctc_plugin.adapters.gradcam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = cnn(seed=7)
    ctc = CTC(model, bias_sharing="proportional")
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="proportional"))
    cam = IntegrativeCAM(model, layers=[model.stem, model.blocks[0]])
    grad_cam = gradcam.IntegrativeGradCAM(model, target_layers=[model.blocks[1]])

    def call(kind: int, images, target, mask):
        classes = torch.as_tensor(target).expand(len(images))
        if kind == 0:
            return ctc.attribute(images, target=target, feature_mask=mask)
        if kind == 1:
            weights = nn.functional.one_hot(classes, CLASSES).float()
            return attributor(images, weights, feature_mask=mask)
        if kind == 2:
            return cam.attribute(images, target=target)
        maps = grad_cam(
            input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes]
        )
        return maps, grad_cam.outputs

    calls = [partial(call, i % 4, *example) for i, example in enumerate(examples(16))]
    check_threads([model], calls)


# ---------------------------------------------------------------------------- Integrative CAM
@pytest.mark.parametrize("layers", ["found", "chosen", "transformer"])
@pytest.mark.parametrize("one_instance", [True, False], ids=["one-instance", "instance-per-call"])
def test_integrative_cam(layers: str, one_instance: bool) -> None:
    model = vit() if layers == "transformer" else cnn(seed=8)
    chosen = [model.stem, model.blocks[0], model.blocks[1]] if layers == "chosen" else None
    cam = instances(lambda: IntegrativeCAM(model, layers=chosen), one_instance)

    def call(images, target, mask):
        return cam().attribute(images, target=target, return_layer_maps=True)

    check_threads([model], [partial(call, *example) for example in examples()])


@pytest.mark.parametrize("layers", ["found", "chosen"])
@pytest.mark.parametrize("one_instance", [True, False], ids=["one-instance", "instance-per-call"])
def test_integrative_grad_cam(layers: str, one_instance: bool) -> None:
    gradcam = pytest.importorskip("ctc_plugin.adapters.gradcam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = cnn(seed=9)
    chosen = [model.blocks[0], model.blocks[1]] if layers == "chosen" else None
    cam = instances(lambda: gradcam.IntegrativeGradCAM(model, target_layers=chosen), one_instance)

    def call(images, target, mask):
        classes = torch.as_tensor(target).expand(len(images))
        chosen_cam = cam()
        maps = chosen_cam(
            input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes]
        )
        outputs = chosen_cam.outputs  # this thread's batch, not another thread's
        with torch.no_grad():
            assert torch.equal(outputs, model(images))
        return maps, outputs

    check_threads([model], [partial(call, *example) for example in examples()])


# ---------------------------------------------------------------------------- Explainer
@pytest.mark.filterwarnings("ignore:the explainer has not been trained")
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
@pytest.mark.parametrize("one_instance", [True, False], ids=["one-instance", "instance-per-call"])
def test_explainer_attribution(mode: str, one_instance: bool) -> None:
    """A training-mode explainer is switched to eval mode for each call and back; the other
    threads never see the switch, and every submodule gets its own mode back."""
    classifier = cnn(seed=10)
    torch.manual_seed(0)
    backbone = nn.Sequential(  # modes matter here: batch statistics and random dropout
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(4, CLASSES, 1),
    )
    explainer = Explainer(backbone, CLASSES)
    explainer.train(mode != "eval")
    if mode == "mixed":  # a part kept in eval mode stays there
        backbone[3].eval()
    attribution = instances(lambda: ExplainerAttribution(classifier, explainer), one_instance)

    def call(images, target, mask):
        return attribution().attribute(images, target=None if isinstance(target, list) else target)

    check_threads([classifier, explainer], [partial(call, *example) for example in examples()])


# ---------------------------------------------------------------------------- concurrency
class Rendezvous(nn.Module):
    """A model whose forward waits until another thread's forward has started too."""

    def __init__(self, inner: nn.Module, barrier: threading.Barrier) -> None:
        super().__init__()
        self.inner = inner
        self.barrier = barrier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait(timeout=20)  # broken (an error) if the other call cannot start
        return self.inner(x)


@pytest.mark.parametrize("method", ["CTC", "IntegrativeCAM", "ExplainerAttribution"])
def test_calls_that_only_read_the_model_run_at_the_same_time(method: str) -> None:
    model = Rendezvous(cnn(seed=11), threading.Barrier(2))
    if method == "CTC":
        explain = partial(CTC(model, bias_sharing="proportional").attribute, target=1)
    elif method == "IntegrativeCAM":
        explain = partial(IntegrativeCAM(model, layers=[model.inner.stem]).attribute, target=1)
    else:
        explainer = Explainer(build_backbone("unet-small", CLASSES, width=2), CLASSES).eval()
        explain = ExplainerAttribution(model, explainer).attribute  # the classifier runs once
    images = [x for x, _, _ in examples(2)]
    masks = [GridSegmenter(2)(x) for x in images]
    calls = [
        partial(explain, x, feature_mask=m) if method == "CTC" else partial(explain, x)
        for x, m in zip(images, masks)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained explainer's warning
        results = run_in_threads(calls, threads=2)
    assert all(r is not None for r in results)


# ---------------------------------------------------------------------------- the lock itself
def _in_thread(function: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


def test_readers_overlap_and_a_writer_excludes_them() -> None:
    lock = ModelLock()
    inside = threading.Barrier(3)

    def read() -> None:
        with lock.reading():
            inside.wait(timeout=TIMEOUT)  # all three readers are inside at once

    readers = [_in_thread(read) for _ in range(2)]
    read()
    for reader in readers:
        reader.join(TIMEOUT)
        assert not reader.is_alive()

    entered = threading.Event()

    def read_once() -> None:
        with lock.reading():
            entered.set()

    with lock.writing():
        reader = _in_thread(read_once)
        assert not entered.wait(0.2), "a reader got in while a writer held the lock"
    reader.join(TIMEOUT)
    assert entered.is_set()


def test_the_lock_is_reentrant_in_every_order() -> None:
    lock = ModelLock()
    with lock.reading(), lock.reading(), lock.writing(), lock.reading(), lock.writing():
        pass
    with lock.writing(), lock.reading(), lock.writing():
        pass
    done = threading.Event()

    def write() -> None:
        with lock.writing():
            done.set()

    thread = _in_thread(write)
    thread.join(TIMEOUT)
    assert done.is_set(), "the lock was not released"


def test_readers_that_all_need_to_write_do_not_wait_for_each_other() -> None:
    lock = ModelLock()
    reading = threading.Barrier(THREADS)
    writers = []
    active = []
    finished = []

    def read_then_write() -> None:
        with lock.reading():
            reading.wait(timeout=TIMEOUT)  # every thread reads before any asks to write
            with lock.writing():
                active.append(1)
                writers.append(len(active))
                active.pop()
            finished.append(1)

    threads = [_in_thread(read_then_write) for _ in range(THREADS)]
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "deadlock"
    assert len(finished) == THREADS and max(writers) == 1


def test_errors_release_the_lock() -> None:
    model = cnn()
    with pytest.raises(ValueError), shared(model), exclusive(model):
        raise ValueError("inside")
    done = threading.Event()

    def write() -> None:
        with exclusive(model):
            done.set()

    _in_thread(write).join(TIMEOUT)
    assert done.is_set()
    assert lock_for(model) is lock_for(model)
    copy.deepcopy(model)  # the lock lives beside the model, not in it


def test_scoped_hooks_ignore_other_threads_passes() -> None:
    model = cnn()
    seen: list[int] = []
    scope = CallScope()
    handle = model.stem.register_forward_hook(scope.only(lambda *_: seen.append(1)))
    try:
        _in_thread(lambda: model(torch.rand(1, 3, SIZE, SIZE))).join(TIMEOUT)
        model(torch.rand(1, 3, SIZE, SIZE))
        assert seen == []
        with scope:
            model(torch.rand(1, 3, SIZE, SIZE))
            _in_thread(lambda: model(torch.rand(1, 3, SIZE, SIZE))).join(TIMEOUT)
        assert seen == [1]
    finally:
        handle.remove()


def test_per_thread_attributes() -> None:
    class Holder:
        value = PerThread(default="none")

    holder = Holder()
    assert holder.value == "none"
    holder.value = "main"
    seen = []

    def other() -> None:
        seen.append(holder.value)
        holder.value = "other"
        seen.append(holder.value)

    _in_thread(other).join(TIMEOUT)
    assert seen == ["none", "other"] and holder.value == "main"
    assert copy.deepcopy(holder).value == "none"


def test_another_calls_scoped_hooks_leave_none_sharing_on_its_gradient_pass():
    """Hooks of a call in another thread (Integrative CAM's) act on that call only.

    ``"none"`` sharing takes its one gradient unless a hook could change it; it fell back to the
    pass of the copies (other roundings) whenever another thread's call held its hooks, so a
    call's bits depended on what ran beside it.
    """
    import torchvision
    from torch.nn.modules.module import register_module_forward_pre_hook

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = GridSegmenter(4)(x)
    ctc = CTC(model, bias_sharing="none")
    alone = ctc.attribute(x, 1, feature_mask=mask)
    other = CallScope()  # not entered here: another thread's call
    handles = [
        register_module_forward_pre_hook(other.only(lambda module, args: None)),
        model.layer1.register_forward_hook(other.only(lambda module, args, out: None)),
    ]
    try:
        beside = ctc.attribute(x, 1, feature_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(beside, alone)


class Pausing(nn.Module):
    """A model whose first armed forward pass waits (at most a second) for ``resume``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.armed = False
            self.paused.set()
            self.resume.wait(1.0)  # in vain where the registration waits for this call
        return self.inner(x)


def test_a_composite_context_waits_for_running_calls():
    """``composite.context(model)`` registers once no call of the package uses the model.

    It merged a running CTC call's BatchNorms halfway through (the docs' "the registration
    waits for running calls"): that call's scores then came from two models.
    """
    model = Pausing(cnn(seed=12)).eval()
    images, target, mask = examples(1)[0]
    ctc = CTC(model, bias_sharing="reference")
    alone = ctc.attribute(images, target, feature_mask=mask)
    composite = CTCComposite(bias_sharing="reference", canonizers=[PositiveEpsMergeBatchNorm()])
    model.armed = True
    explained = run_in_background(lambda: ctc.attribute(images, target, feature_mask=mask))
    assert model.paused.wait(TIMEOUT)
    with composite.context(model):
        model.resume.set()
        during = explained()
    assert_identical(during, alone)


def run_in_background(call: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``call`` in a thread; the function returned waits for its result (or error)."""
    out: list[Any] = []

    def work() -> None:
        try:
            out.append((True, call()))
        except BaseException as error:  # handed to the test's thread
            out.append((False, error))

    thread = _in_thread(work)

    def result() -> Any:
        thread.join(TIMEOUT)
        assert out, "the call did not end: a deadlock"
        ok, value = out[0]
        if not ok:
            raise value
        return value

    return result


def test_composites_moved_onto_each_others_models_in_two_threads_do_not_deadlock(monkeypatch):
    """Was a deadlock: ``register`` held the model a composite was on while it waited for the
    new one, so composite 1 (on A) moved to B and composite 2 (on B) moved to A, each thread
    holding its old model, waited for each other forever."""
    import contextlib

    import ctc_plugin.ctc.composite as composite_module

    first = cnn(seed=12).eval(), cnn(seed=13).eval()
    composites = [CTCComposite(bias_sharing="reference") for _ in first]
    for composite, model in zip(composites, first, strict=True):
        composite.register(model)
    both_hold_one = threading.Barrier(2, timeout=2.0)
    waited = threading.local()
    real = composite_module.exclusive

    @contextlib.contextmanager
    def exclusive(obj):
        with real(obj):
            if isinstance(obj, nn.Module) and not getattr(waited, "done", False):
                waited.done = True  # each thread, once it holds its first model
                with contextlib.suppress(threading.BrokenBarrierError):
                    both_hold_one.wait()
            yield

    monkeypatch.setattr(composite_module, "exclusive", exclusive)

    def move(composite: CTCComposite, model: nn.Module) -> None:
        with contextlib.suppress(RuntimeError):  # the other composite may be there still
            composite.register(model)

    moved = [
        run_in_background(lambda c=c, m=m: move(c, m))
        for c, m in zip(composites, reversed(first), strict=True)
    ]
    for result in moved:
        result()  # asserts that the call ended
    for composite in composites:
        composite.remove()


def test_remove_takes_the_model_the_composite_is_on_when_it_holds_it(monkeypatch):
    """``remove`` read the model it was registered on before it took the locks; registered
    elsewhere meanwhile (by another thread), it then unhooked and restored that other model
    while holding the first one only, under a CTC call that held the other model."""
    import contextlib

    import ctc_plugin.ctc.composite as composite_module
    from ctc_plugin.concurrency import lock_for

    first, other = cnn(seed=14).eval(), cnn(seed=15).eval()
    composite = CTCComposite(bias_sharing="reference")
    composite.register(first)
    real_exclusive, real_registered = (
        composite_module.exclusive,
        composite_module.registered_tensors,
    )
    moved, unheld = [], []

    @contextlib.contextmanager
    def exclusive(obj):
        if obj is first and not moved:  # another thread registers it elsewhere meanwhile
            moved.append(True)
            composite.register(other)
        with real_exclusive(obj):
            yield

    def registered_tensors(module):
        if lock_for(module)._writer != threading.get_ident():
            unheld.append(module)
        return real_registered(module)

    monkeypatch.setattr(composite_module, "exclusive", exclusive)
    monkeypatch.setattr(composite_module, "registered_tensors", registered_tensors)
    composite.remove()
    assert moved and not unheld
    assert composite._own_tensors is None
    assert not any(module._forward_hooks for module in other.modules())
