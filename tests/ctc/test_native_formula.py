"""The compiled ``"reference"`` formula (`ctc_plugin.ctc.native`): equal to the spec, on boxes,
with exact zeros, per-copy biases and threads; built once and cached; refused when wrong; and a
machine without it falls back to torch's operations (or says why when it is required)."""

from __future__ import annotations

import dataclasses
import math
import os
import stat

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc import native
from ctc_plugin.ctc.sharing import reference_shares, reference_spread
from ctc_plugin.ctc.speedups import DEFAULT, SPEC
from tests.ctc.test_sparse import sam_like_mask

# Tests here break the kernel on purpose (no compiler, a disagreeing build, a shared cache):
# the fallback's warning is expected; the test of the warning itself catches it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:the compiled reference kernel cannot be used here:RuntimeWarning"
)

needs_kernel = pytest.mark.skipif(
    native.library() is None, reason=f"no compiled kernel here: {native.unavailable_reason()}"
)


def _layer(copies, channels, shape, seed=0, exact_zeros=False):
    """Bias-free copies (zero outside a box each), the full copy, a bias and its spread."""
    generator = torch.Generator().manual_seed(seed)
    z_full = torch.randn(1, 1, channels, *shape, generator=generator)
    if exact_zeros:
        z_full.view(-1)[::7] = 0.0
    z = torch.randn(1, copies, channels, *shape, generator=generator)
    z *= torch.rand(1, copies, 1, *[1] * len(shape), generator=generator) * 3
    z[z.abs() < 0.2] = 0.0  # zeros inside the boxes too
    bias = torch.randn(1, 1, channels, *[1] * len(shape), generator=generator)
    return z, z_full, bias


def _boxes(copies, height, width, seed):
    """Random boxes: narrow, wide, whole-map, one-row, one-column and empty ones."""
    generator = torch.Generator().manual_seed(seed)
    fixed = [(0, height, 0, width), (2, 3, 0, width), (0, height, 1, 2), (0, 0, 0, 0)]
    boxes = []
    for copy in range(copies):
        if copy < len(fixed):
            boxes.append(fixed[copy])
            continue
        r0, c0 = (int(torch.randint(0, n, (1,), generator=generator)) for n in (height, width))
        r1 = int(torch.randint(r0 + 1, height + 1, (1,), generator=generator))
        c1 = int(torch.randint(c0 + 1, width + 1, (1,), generator=generator))
        boxes.append((r0, r1, c0, c1))
    return boxes


def _zero_outside(z, boxes):
    for copy, (r0, r1, c0, c1) in enumerate(boxes):
        inside = torch.zeros(z.shape[-2:], dtype=torch.bool)
        inside[r0:r1, c0:c1] = True
        z[0, copy, :, ~inside] = 0.0
    return z


def _divisor(z_full):
    ceil_full = torch.ceil(z_full * 10.0)
    return ceil_full.masked_fill(ceil_full == 0, math.inf)


def _assert_close(actual, expected, tolerance=1e-6):
    """Equal to ``tolerance`` of the largest value (float32 rounding, not of each value: a
    share can cancel a value to nearly 0)."""
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=tolerance)


def _spec(z, z_full, bias):
    dims = tuple(range(3, z.dim()))
    sigma = reference_spread(z_full, bias, dims)
    return z + reference_shares(z, z_full, sigma, dims) * bias, sigma


@needs_kernel
@pytest.mark.parametrize("shape", [(14, 14), (7, 7), (28, 33), (1, 1), (40,)])
def test_whole_maps_equal_the_spec(shape):
    z, z_full, bias = _layer(9, 5, shape, seed=len(shape) + shape[0])
    expected, sigma = _spec(z, z_full, bias)
    native.add_reference_shares(z, _divisor(z_full), None, sigma, bias)
    _assert_close(z, expected)


@needs_kernel
def test_exact_zeros_of_the_full_copy_count_where_the_copy_is_zero():
    z, z_full, bias = _layer(6, 4, (9, 11), seed=3, exact_zeros=True)
    expected, sigma = _spec(z, z_full, bias)
    exact_zero = (z_full == 0).float()
    assert exact_zero.sum() > 0
    native.add_reference_shares(z, _divisor(z_full), exact_zero, sigma, bias)
    _assert_close(z, expected)


@needs_kernel
@pytest.mark.parametrize(("height", "width"), [(56, 56), (28, 28), (14, 13), (9, 40)])
def test_boxes_narrow_and_wide_equal_the_whole_maps(height, width):
    """Narrow boxes are gathered row by row, wide ones computed on whole rows."""
    z, z_full, bias = _layer(20, 3, (height, width), seed=height + width)
    boxes = _boxes(20, height, width, seed=width)
    z = _zero_outside(z, boxes)
    expected, sigma = _spec(z, z_full, bias)
    on_boxes = z.clone()
    native.add_reference_shares(on_boxes, _divisor(z_full), None, sigma, bias, boxes)
    _assert_close(on_boxes, expected)
    whole = z.clone()
    native.add_reference_shares(whole, _divisor(z_full), None, sigma, bias)
    _assert_close(on_boxes, whole, 1e-7)


@needs_kernel
def test_a_bias_per_copy_and_copies_that_are_a_view():
    """A bias per copy, and copies that are a slice of a larger grouped tensor (strides)."""
    z, z_full, _ = _layer(7, 4, (6, 6), seed=5)
    bias = torch.randn(1, 7, 4, 1, 1)
    sigma = reference_spread(z_full, bias[:, :1], (3, 4))  # from the full copy's bias
    expected = z + reference_shares(z, z_full, sigma, (3, 4)) * bias
    grouped = torch.cat([torch.zeros_like(z[:, :2]), z], 1)
    native.add_reference_shares(grouped[:, 2:], _divisor(z_full), None, sigma, bias)
    _assert_close(grouped[:, 2:], expected)
    assert torch.equal(grouped[:, :2], torch.zeros_like(z[:, :2]))  # nothing written outside


@needs_kernel
def test_threads_split_the_copies_with_the_same_result():
    z, z_full, bias = _layer(13, 6, (10, 10), seed=8)
    _, sigma = _spec(z, z_full, bias)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = z.clone()
            native.add_reference_shares(out, _divisor(z_full), None, sigma, bias)
            results.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def _cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # as in ResNets: boxes reach BatchNorm
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        for layer in (model[1], model[4]):
            layer.running_mean.uniform_(-0.3, 0.3)
            layer.bias.uniform_(-0.4, 0.4)
    return model.eval()


@needs_kernel
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("mask", ["grid", "sam"])
def test_ctc_scores_with_the_kernel_equal_the_spec(sparse, mask):
    model = _cnn()
    x = torch.rand(2, 3, 32, 32)
    if mask == "grid":
        grid = (torch.arange(32) // 8).view(-1, 1) * 4 + (torch.arange(32) // 8).view(1, -1)
        feature_mask = grid.view(1, 1, 32, 32)
    else:
        feature_mask = sam_like_mask(32, seed=2)
    calls = []
    original = native.add_reference_shares

    def counted(*args, **kwargs):
        calls.append(kwargs.get("boxes", args[5] if len(args) > 5 else None))
        return original(*args, **kwargs)

    spec, kernel = CTC(model, bias_sharing="reference"), CTC(model, bias_sharing="reference")
    spec._speedups = SPEC
    kernel._speedups = dataclasses.replace(DEFAULT, sparse_copies=sparse, native_formula=True)
    _, expected = spec.attribute(x, target=1, feature_mask=feature_mask, return_feature_scores=True)
    native.add_reference_shares = counted
    try:
        _, actual = kernel.attribute(
            x, target=1, feature_mask=feature_mask, return_feature_scores=True
        )
    finally:
        native.add_reference_shares = original
    assert calls, "the kernel did not run"
    assert any(boxes is not None for boxes in calls) == sparse  # boxes come with sparse copies
    _assert_close(actual.scores, expected.scores, 1e-5)


def _fresh_state(monkeypatch, tmp_path):
    """A process that has not built the kernel yet, with its own cache directory."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("CTC_PLUGIN_CACHE", str(tmp_path / "cache"))


def test_without_a_compiler_ctc_falls_back_and_required_raises(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match=r"kernel cannot be used here \(.*no C compiler"):
        assert native.library() is None  # said once: the scores may round otherwise
    assert "no C compiler" in native.unavailable_reason()
    model, x = _cnn(), torch.rand(1, 3, 16, 16)
    mask = (torch.arange(16) // 8).view(-1, 1) * 2 + (torch.arange(16) // 8).view(1, -1)
    automatic, torch_only = (
        CTC(model, bias_sharing="reference"),
        CTC(model, bias_sharing="reference"),
    )
    torch_only._speedups = dataclasses.replace(DEFAULT, native_formula=False)
    expected = torch_only.attribute(x, target=0, feature_mask=mask)
    torch.testing.assert_close(automatic.attribute(x, target=0, feature_mask=mask), expected)
    required = CTC(model, bias_sharing="reference")
    required._speedups = dataclasses.replace(DEFAULT, native_formula=True)
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError, match="native_formula=True.*no C compiler"):
        required.attribute(x, target=0, feature_mask=mask)
    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks_after == hooks_before
    with pytest.raises(RuntimeError, match="unavailable: no C compiler"):
        native.add_reference_shares(*_kernel_arguments())


def _kernel_arguments():
    z, z_full, bias = _layer(2, 2, (3, 3))
    _, sigma = _spec(z, z_full, bias)
    return z, _divisor(z_full), None, sigma, bias


@needs_kernel
def test_the_kernel_is_compiled_once_per_machine_and_then_loaded(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "cc-wrapper"
    compiler = os.environ.get("CC") or "cc"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec {compiler} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(wrapper))
    assert native.library() is not None
    compiled = [line for line in log.read_text().splitlines() if "-shared" in line]
    assert len(compiled) == 1
    cached = sorted(path.name for path in (tmp_path / "cache" / "kernels").iterdir())
    assert len(cached) == 2 and cached[1] == cached[0] + ".sha256"  # no partial file
    assert cached[0].startswith("reference_formula-") and cached[0].endswith(".so")
    monkeypatch.setattr(native, "_state", {})  # a new process, the same machine
    assert native.library() is not None
    assert len([line for line in log.read_text().splitlines() if "-shared" in line]) == 1


@needs_kernel
def test_a_kernel_that_disagrees_with_the_spec_is_not_used(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    wrong = tmp_path / "reference_formula.c"
    source = native.SOURCE.read_text()
    assert "share[i] * factor" in source
    wrong.write_text(source.replace("share[i] * factor", "2.0f * share[i] * factor"))
    monkeypatch.setattr(native, "SOURCE", wrong)
    assert native.library() is None
    assert "disagrees with the spec" in native.unavailable_reason()
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []  # not kept for the next process


def test_layers_the_kernel_does_not_take_go_to_torch():
    z = torch.zeros(1, 3, 4, 5, 5)
    per_channel = torch.zeros(4, 1, 1)
    assert native.applicable(z, per_channel, (3, 4))
    assert not native.applicable(z.double(), per_channel.double(), (3, 4))  # float32 only
    assert not native.applicable(z, torch.zeros(4, 5, 5), (2, 3, 4))  # a bias per unit
    assert not native.applicable(z, per_channel, (4,))  # statistics per row
    assert not native.applicable(z.transpose(3, 4), per_channel, (3, 4))  # columns strided
    assert not native.applicable(torch.zeros(2, 3, 4, 5, 5), per_channel, (3, 4))  # 2 examples
    assert native.applicable(torch.zeros(1, 3, 4, 7), torch.zeros(4, 1), (3,))  # 1-d maps


def _shares_in_a_forked_child(arguments, queue):
    z = arguments[0]
    native.add_reference_shares(*arguments)
    queue.put(z.tolist())  # plain data: a tensor would travel as shared memory


@needs_kernel
def test_a_forked_child_gets_threads_of_its_own():
    """The parent's pool threads do not survive a fork; the child's call must not wait on them."""
    multiprocessing = pytest.importorskip("multiprocessing")
    context = multiprocessing.get_context("fork")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = _kernel_arguments()
        native.add_reference_shares(*expected)  # the parent's pool exists now
        arguments = _kernel_arguments()
        queue = context.Queue()
        child = context.Process(target=_shares_in_a_forked_child, args=(arguments, queue))
        child.start()
        result = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert child.exitcode == 0
    assert torch.equal(torch.tensor(result), expected[0])


def test_a_cache_directory_others_can_write_is_not_used(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    (tmp_path / "cache" / "kernels").mkdir(parents=True)
    (tmp_path / "cache" / "kernels").chmod(0o777)  # past the umask
    assert native.library() is None
    assert "is writable by others; set CTC_PLUGIN_CACHE" in native.unavailable_reason()


@needs_kernel
def test_a_cache_root_a_group_can_write_still_holds_the_kernels(monkeypatch, tmp_path):
    """Under umask 002 the cache root is 0o775 (the masks' folder is made there too): only the
    kernels' own folder, made 0o700, must be this user's alone."""
    _fresh_state(monkeypatch, tmp_path)
    (tmp_path / "cache").mkdir(mode=0o775)
    (tmp_path / "cache").chmod(0o775)
    assert native.library() is not None, native.unavailable_reason()


@needs_kernel
@pytest.mark.parametrize("damage", ["truncated", "empty", "hash missing"])
def test_a_damaged_cached_kernel_is_compiled_again(monkeypatch, tmp_path, damage):
    _fresh_state(monkeypatch, tmp_path)
    assert native.library() is not None
    (library,) = (tmp_path / "cache" / "kernels").glob("*.so")
    whole = library.read_bytes()
    if damage == "hash missing":
        native._hash_file(library).unlink()
    else:  # a new file in its place (this process has the old one mapped): loading a truncated
        # library could kill the process
        damaged = tmp_path / "damaged.so"
        damaged.write_bytes(whole[:4096] if damage == "truncated" else b"")
        os.replace(damaged, library)
    monkeypatch.setattr(native, "_state", {})  # a new process
    assert native.library() is not None
    assert library.read_bytes() == whole


def test_a_compiler_command_with_options_is_its_own_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "cc")
    plain = native._key(["cc"])
    assert native._key(["cc", "-ffast-math"]) != plain


@pytest.mark.parametrize(
    ("compiler", "reason"),
    [('gcc "', "$CC cannot be read as a command"), ("true", "compiling the reference formula")],
)
def test_a_compiler_that_cannot_run_or_writes_nothing_falls_back(
    monkeypatch, tmp_path, compiler, reason
):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", compiler)
    assert native.library() is None
    assert reason in native.unavailable_reason()
    model = _cnn()
    ctc = CTC(model, bias_sharing="reference")
    mask = (torch.arange(16) // 8).view(-1, 1) * 2 + (torch.arange(16) // 8).view(1, -1)
    ctc.attribute(torch.rand(1, 3, 16, 16), target=0, feature_mask=mask)  # torch's formula
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))


def _state_in_a_child(queue):
    queue.put(native.unavailable_reason() is None or native.unavailable_reason())


def test_a_child_forked_while_another_thread_builds_does_not_wait_forever(monkeypatch, tmp_path):
    """The lock held by a thread at the fork is the child's no more."""
    multiprocessing = pytest.importorskip("multiprocessing")
    _fresh_state(monkeypatch, tmp_path)
    holding = native._lock
    holding.acquire()  # another thread is building
    try:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_state_in_a_child, args=(queue,))
        child.start()
        answer = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        holding.release()
    assert child.exitcode == 0 and answer is not None


@needs_kernel
def test_arguments_the_kernel_cannot_take_are_refused_before_it_runs():
    """The kernel reads and writes what it is told: wrong extents are errors, not overruns."""
    z, divisor, _, sigma, bias = _kernel_arguments()
    with pytest.raises(ValueError, match="leaves the 3 x 3 map"):
        native.add_reference_shares(z, divisor, None, sigma, bias, [(0, 3, 0, 3), (0, 4, 0, 3)])
    with pytest.raises(ValueError, match="1 boxes for 2 copies"):
        native.add_reference_shares(z, divisor, None, sigma, bias, [(0, 3, 0, 3)])
    with pytest.raises(ValueError, match="float32 CPU copies"):
        native.add_reference_shares(z.double(), divisor, None, sigma, bias.double())
    with pytest.raises(ValueError, match="exactly 0"):
        native.add_reference_shares(z, divisor, divisor == 0, sigma, bias, [(0, 3, 0, 3)] * 2)
    with pytest.raises(RuntimeError):  # a divisor or spread of another size: torch's error
        native.add_reference_shares(z, divisor[:, :, :1, :2], None, sigma, bias)
    z_before = z.clone()
    native.add_reference_shares(z, divisor.double(), None, sigma, bias)  # converted
    expected = z_before.clone()
    native.add_reference_shares(expected, divisor, None, sigma, bias)
    assert torch.equal(z, expected)


@needs_kernel
def test_one_block_per_layer_still_takes_the_kernel_one_example_at_a_time():
    model, x = _cnn(), torch.rand(3, 3, 16, 16)
    mask = (torch.arange(16) // 8).view(-1, 1) * 2 + (torch.arange(16) // 8).view(1, -1)
    calls = []
    original = native.add_reference_shares

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    ctc, spec = CTC(model, bias_sharing="reference"), CTC(model, bias_sharing="reference")
    ctc._speedups = dataclasses.replace(DEFAULT, block_elements=None, copies_per_pass=None)
    spec._speedups = SPEC
    native.add_reference_shares = counted
    try:
        actual = ctc.attribute(x, target=0, feature_mask=mask)
    finally:
        native.add_reference_shares = original
    assert calls and set(calls) == {1}
    _assert_close(actual, spec.attribute(x, target=0, feature_mask=mask), 1e-5)


@needs_kernel
def test_tensors_on_another_device_are_refused_before_the_kernel_reads_them():
    z, divisor, _, sigma, bias = _kernel_arguments()
    with pytest.raises(ValueError, match="must be on the CPU"):
        native.add_reference_shares(z, divisor.to("meta"), None, sigma, bias)
    with pytest.raises(ValueError, match="must be on the CPU"):
        native.add_reference_shares(z, divisor, None, sigma, bias.to("meta"))


@needs_kernel
def test_exact_zeros_and_divisor_given_in_different_layouts():
    """The kernel reads both with one set of strides: a strided divisor view is made contiguous."""
    z, z_full, bias = _layer(4, 3, (6, 6), seed=11, exact_zeros=True)
    expected, sigma = _spec(z, z_full, bias)
    wide = torch.full((1, 1, 3, 6, 10), math.inf)
    wide[..., :6] = _divisor(z_full)
    native.add_reference_shares(z, wide[..., :6], (z_full == 0).float(), sigma, bias)
    _assert_close(z, expected)
