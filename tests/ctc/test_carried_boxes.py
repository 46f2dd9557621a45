"""Carried boxes and reused result memory of the sparse pass (``ctc_plugin.ctc.sparse``).

The boxes a sparse convolution finds travel with its result through BatchNorm, the sharing,
ReLU and residual sums, so the next convolution does not scan its input again; an in-place
change the pass did not make (through a view) must drop them. Results are held to the spec.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc import sparse
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import make_sharing
from ctc_plugin.ctc.speedups import DEFAULT

from .test_sparse import assert_zero_outside, grid
from .test_speedups import MODES, assert_same_as_spec

#: The default speed-ups with every convolution sparse, and ``"none"`` through the pass of
#: copies (not its gradient shortcut, which is never sparse).
EVERYWHERE = replace(DEFAULT, sparse_dense_above=1.0, gradient_shortcut=False)


def _scans(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes of every scan for boxes (``input_boxes``) from now on."""
    shapes: list[tuple[int, ...]] = []
    scan = sparse.input_boxes

    def counted(x):
        shapes.append(tuple(x.shape[1:]))
        return scan(x)

    monkeypatch.setattr(sparse, "input_boxes", counted)
    return shapes


@pytest.mark.parametrize("mode", MODES)
def test_a_resnet_scans_only_where_an_operation_dropped_the_boxes(monkeypatch, mode):
    """ResNet-18: the stem convolution scans the image; every other convolution reads the
    boxes carried through BatchNorm, the sharing, ReLU, the max pooling and the residual sums
    (and the downsampling branches); the final average pooling reads only an indicator."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.rand(1, 3, 64, 64)
    shapes = _scans(monkeypatch)
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = EVERYWHERE
    ctc.attribute(x, target=1, feature_mask=grid(64, 4))
    # the image, and the final average pooling's one-channel indicator of the copies' boxes
    assert shapes == [(3, 64, 64), (1, 1, 1)]


class _WritesIntoAView(nn.Module):
    """A convolution whose result the model changes in place through a view (``y[..] += c``),
    which makes every copy nonzero there ("proportional" splits the constant where all copies
    are zero), before a second convolution reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.second = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.first(x))
        corner = y[:, :, :3, :3]
        corner += 0.5
        return self.head(self.second(torch.relu(y)).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_an_in_place_change_through_a_view_drops_the_boxes(monkeypatch, mode):
    shapes = _spec_then_scans(monkeypatch, _WritesIntoAView(), mode, seed=1)
    assert shapes == [(3, 16, 16), (4, 16, 16)]  # the second convolution scanned again


def _spec_then_scans(monkeypatch, model: nn.Module, mode: str, seed: int) -> list:
    """A small model's scores equal the spec's on a 16x16 image with a 4x4 grid; then the
    input shapes of the scans for boxes of one more call."""
    torch.manual_seed(seed)
    model = model.eval().double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    mask = grid(16, 4)
    assert_same_as_spec(model, x, mask, 1, mode, EVERYWHERE)
    shapes = _scans(monkeypatch)
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = EVERYWHERE
    ctc.attribute(x, target=1, feature_mask=mask)
    return shapes


@pytest.mark.parametrize("mode", MODES)
def test_results_the_model_keeps_are_never_overwritten(mode):
    """Forward hooks keep every convolution's result (the BatchNorms' are changed in place by
    the model's own ReLUs): after the pass, each still holds the values it had when it was
    made, though the pass reused the memory of the results the model let go."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=5).eval()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module, inputs, output):
        kept.append((output, output.detach().clone()))

    handles = [
        module.register_forward_hook(keep)
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = EVERYWHERE
    try:
        ctc.attribute(torch.rand(1, 3, 48, 48), target=1, feature_mask=grid(48, 3))
    finally:
        for handle in handles:
            handle.remove()
    assert len(kept) >= 20
    for held, when_made in kept:
        assert torch.equal(held, when_made)


def _boxed(values: torch.Tensor, box_rows_: list[tuple[int, int]]) -> torch.Tensor:
    """``values`` with each row zero outside its map rows."""
    out = torch.zeros_like(values)
    for row, (first, stop) in enumerate(box_rows_):
        out[row, :, first:stop] = values[row, :, first:stop]
    return out


@pytest.mark.parametrize("subtract", [False, True])
def test_an_in_place_sum_adds_only_on_the_rows_of_the_second_tensors_boxes(subtract):
    """``a += b`` / ``a -= b`` with carried boxes (computed on ``b``'s rows only) equals the
    dense result, is ``a`` itself, and carries the union of the boxes."""
    layout = CopyLayout(examples=1, features=2, reference_full=True, baseline=False)
    ctc_pass = sparse.SparseGatedPass(layout=layout, sharing=make_sharing("reference"))
    generator = torch.Generator().manual_seed(3)
    a_rows, b_rows = [(0, 8)] * 2 + [(1, 3), (0, 0)], [(0, 8)] * 2 + [(2, 6), (5, 8)]
    a = _boxed(torch.randn(4, 2, 8, 5, generator=generator), a_rows)
    b = _boxed(torch.randn(4, 2, 8, 5, generator=generator), b_rows)
    expected = a - b if subtract else a + b
    ctc_pass.carry(ctc_pass.tag(a), [(r0, r1, 0, 5) for r0, r1 in a_rows])
    ctc_pass.carry(ctc_pass.tag(b), [(r0, r1, 0, 5) for r0, r1 in b_rows])
    func = torch.Tensor.__isub__ if subtract else torch.Tensor.__iadd__
    out = ctc_pass.linear(func, (a, b), {})
    assert out is a
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert ctc_pass.boxes(out) == ((0, 8, 0, 5),) * 2 + ((1, 6, 0, 5), (5, 8, 0, 5))


@pytest.mark.parametrize("mode", MODES)
def test_several_examples_in_one_pass_equal_the_spec(mode):
    """Two images travel in one pass: the rules that work on each copy's rows (BatchNorm,
    ReLU, the residual sums, the row-wise matrix products) split their runs of copies where
    the example changes, and the scores equal the spec's. Four small features on the top rows
    and a large background segment (SAM's kind) as the last: its copy covers every row early,
    so a run of equal rows goes from it into the next example's gate and full copies."""
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=5).eval().double()
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64)
    mask = torch.full((1, 1, 48, 48), 4)
    for label in range(4):
        mask[..., :12, 12 * label : 12 * (label + 1)] = label
    assert_same_as_spec(model, x, mask, torch.tensor([1, 3]), mode, EVERYWHERE)


def test_runs_of_copies_split_where_the_example_changes():
    layout = CopyLayout(examples=3, features=2, reference_full=True, baseline=False)
    ctc_pass = sparse.SparseGatedPass(layout=layout, sharing=make_sharing("reference"))
    rows = [(1, 2)] * 2 + [(0, 5)] * 7 + [(0, 0)] + [(2, 5)] * 2  # 3 examples of 4 copies
    parts = [
        (part[0].start, part[0].stop, part[2].start, example)
        for part, example in ctc_pass._row_parts(rows)
    ]
    assert parts == [(0, 2, 1, 0), (2, 4, 0, 0), (4, 8, 0, 1), (8, 9, 0, 2), (10, 12, 2, 2)]


@st.composite
def _pooled_copies(draw):
    """(x, boxes, pooling) of two examples' copies zero outside drawn boxes, and a max pooling
    of drawn kernel, stride, padding, dilation and ceil mode (or an adaptive one)."""
    height, width = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    dilation = draw(st.integers(1, 2))
    ceil_mode = draw(st.booleans())
    if draw(st.booleans()):
        size = (draw(st.integers(1, height)), draw(st.integers(1, width)))
        pooling = functools.partial(F.adaptive_max_pool2d, output_size=size, return_indices=True)
    else:
        assume(dilation * (kernel - 1) + 1 <= min(height, width) + 2 * padding)
        pooling = functools.partial(
            F.max_pool2d,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            ceil_mode=ceil_mode,
            return_indices=True,
        )
    x, boxes = _copies_in_boxes(draw, 8, height, width)
    return x, boxes, pooling


def _copies_in_boxes(draw, rows: int, height: int, width: int):
    """(x, boxes): ``rows`` copies of 4 per example, the gate copies whole, the others zero
    outside drawn boxes."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    x = torch.randn(rows, 3, height, width, generator=generator, dtype=torch.float64)
    boxes = []
    for row in range(rows):
        if row % 4 == 0:  # the gate copies are whole
            boxes.append((0, height, 0, width))
            continue
        r0, c0 = draw(st.integers(0, height)), draw(st.integers(0, width))
        box = (r0, draw(st.integers(r0, height)), c0, draw(st.integers(c0, width)))
        outside = torch.ones(height, width, dtype=torch.bool)
        outside[box[0] : box[1], box[2] : box[3]] = False
        x[row, :, outside] = 0
        boxes.append(box)
    return x, boxes


def _assert_zero_outside_carried_boxes(ctc_pass, result: torch.Tensor) -> None:
    """``result`` carries boxes, and each row of it is exactly zero outside its box."""
    out_boxes = ctc_pass.boxes(result)
    assert out_boxes is not None
    assert_zero_outside(result, out_boxes)


@settings(max_examples=80, deadline=None)
@given(_pooled_copies())
def test_max_pooling_on_carried_boxes_equals_the_spec_and_is_zero_outside_its_boxes(drawn):
    """The sparse max pooling (each copy gathered on the rows its box reaches, boxes found
    from the argmax positions alone) equals the spec's gather everywhere, carries boxes outside
    which its result is zero, and leaves memory it reuses clean."""
    x, boxes, pooling = drawn
    layout = CopyLayout(examples=2, features=2, reference_full=True, baseline=False)
    ctc_pass = sparse.SparseGatedPass(layout=layout, sharing=make_sharing("reference"))
    expected = GatedPass.max_pool_switches(ctc_pass, x, pooling)
    for _ in range(2):  # the second pooling reuses the first one's memory
        ctc_pass.carry(ctc_pass.tag(x), boxes)
        actual = ctc_pass.max_pool_switches(x, pooling)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        _assert_zero_outside_carried_boxes(ctc_pass, actual)
        actual.fill_(5.0)  # garbage for the next pooling to find (not recorded)
        del actual


@st.composite
def _average_pooled_copies(draw):
    """(x, boxes, pooling) of copies zero outside drawn boxes, and an average pooling of drawn
    kernel, stride, padding, ceil mode and padding count (or an adaptive one)."""
    height, width = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    if draw(st.booleans()):
        size = (draw(st.integers(1, height)), draw(st.integers(1, width)))
        pooling = functools.partial(F.adaptive_avg_pool2d, output_size=size)
    else:
        kernel = draw(st.integers(1, 3))
        pooling = functools.partial(
            F.avg_pool2d,
            kernel_size=kernel,
            stride=draw(st.integers(1, 3)),
            padding=draw(st.integers(0, kernel // 2)),
            ceil_mode=draw(st.booleans()),
            count_include_pad=draw(st.booleans()),
        )
    x, boxes = _copies_in_boxes(draw, 4, height, width)
    return x, boxes, pooling


@settings(max_examples=80, deadline=None)
@given(_average_pooled_copies())
def test_average_pooling_carries_boxes_outside_which_its_result_is_zero(drawn):
    """An average pooling is computed as the spec does and its result carries boxes, found by
    pooling each copy's box as an indicator, outside which it is exactly zero."""
    x, boxes, pooling = drawn
    layout = CopyLayout(examples=1, features=2, reference_full=True, baseline=False)
    ctc_pass = sparse.SparseGatedPass(layout=layout, sharing=make_sharing("reference"))
    ctc_pass.carry(ctc_pass.tag(x), boxes)
    pooled = ctc_pass.linear(pooling.func, (x,), dict(pooling.keywords))
    torch.testing.assert_close(pooled, pooling(x), rtol=0, atol=0)
    _assert_zero_outside_carried_boxes(ctc_pass, pooled)
    assert ctc_pass.boxes(pooled)[0] == (0, pooled.shape[2], 0, pooled.shape[3])  # the gate copy


class _PoolsBetweenConvolutions(nn.Module):
    """Convolution, BatchNorm, ReLU, average pooling, convolution (a DenseNet transition)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(torch.relu(self.norm(self.first(x))), 2)
        return self.head(self.second(y).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_the_convolution_after_an_average_pooling_reads_the_carried_boxes(monkeypatch, mode):
    shapes = _spec_then_scans(monkeypatch, _PoolsBetweenConvolutions(), mode, seed=5)
    # the image, and the pooling's one-channel indicator instead of the pooled 4-channel maps
    assert shapes == [(3, 16, 16), (1, 8, 8)]
