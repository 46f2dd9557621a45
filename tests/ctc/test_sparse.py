"""Sparse copies (``Speedups.sparse_copies``) give the dense pass's results.

The convolution itself against ``F.conv2d`` on copies with random boxes (kernel, stride,
padding, dilation, groups drawn by hypothesis); whole passes of random CNNs (poolings,
BatchNorm, residual adds) against the spec in float64 to 1e-10 of the largest score, with grid
masks and SAM-like masks (one large background segment, nested sizes). Torchvision models and
the zoo families are in ``test_speedups.py`` (``SPARSE``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.ctc import sparse
from ctc_plugin.ctc.boxes import box_rows, input_boxes
from ctc_plugin.ctc.sparse import ConvCall, sparse_conv2d
from ctc_plugin.ctc.speedups import DEFAULT, SPEC, Speedups
from ctc_plugin.ctc.workspace import OutputPool

from .test_output_pool import linux_only
from .test_speedups import MODES, SPARSE, assert_same_as_spec


@st.composite
def convolutions(draw: st.DrawFn):
    """A ``ConvCall`` on copies that are zero outside a random box (some empty, some full)."""
    groups = draw(st.sampled_from([1, 2]))
    channels = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    height, width = draw(st.integers(8, 16)), draw(st.integers(8, 16))
    copies = draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    x = torch.randn(copies, channels, height, width, generator=generator, dtype=torch.float64)
    for copy in range(copies):
        kind = draw(st.sampled_from(["box", "box", "empty", "full", "scattered"]))
        if kind == "empty":
            x[copy] = 0
        elif kind == "box":
            r0, c0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
            r1, c1 = draw(st.integers(r0 + 1, height)), draw(st.integers(c0 + 1, width))
            keep = torch.zeros(height, width, dtype=torch.bool)
            keep[r0:r1, c0:c1] = True
            x[copy] *= keep
        elif kind == "scattered":
            x[copy] *= torch.rand(height, width, generator=generator) > 0.9
    out_channels = groups * draw(st.integers(1, 3))
    weight = torch.randn(
        out_channels, channels // groups, *kernel, generator=generator, dtype=torch.float64
    )
    reach = [dilation[a] * (kernel[a] - 1) + 1 for a in range(2)]
    if height + 2 * padding[0] < reach[0] or width + 2 * padding[1] < reach[1]:
        padding = (reach[0], reach[1])
    return ConvCall(x, weight, stride, padding, dilation, groups)


@settings(max_examples=150, deadline=None)
@given(convolutions(), st.sampled_from([1, 2, 8]))
def test_the_sparse_convolution_is_the_dense_one(call, size_steps):
    expected = call.dense()
    pool = OutputPool()  # reused memory, cleared only where it was written
    for carried in (None, input_boxes(call.x)):
        for results in (None, pool, pool):
            actual, boxes = sparse_conv2d(call, 1.0, size_steps, boxes=carried, results=results)
            torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
            assert_zero_outside(expected, boxes)
            if results is not None:
                results.record(actual, box_rows(boxes))
            del actual


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dense_above", [0.0, 1.0])
def test_pointwise_convolutions_are_matrix_products_equal_to_conv2d(
    monkeypatch, stride, dense_above
):
    """1x1 convolutions on large enough maps go through ``pointwise_product`` (dense into the
    pool's memory, or on the crops), and equal ``conv2d``."""
    products = []
    product = sparse.pointwise_product
    monkeypatch.setattr(
        sparse, "pointwise_product", lambda *args: products.append(1) or product(*args)
    )
    generator = torch.Generator().manual_seed(stride)
    x = torch.randn(5, 6, 24, 24, generator=generator, dtype=torch.float64)
    x[1:, :, :, :12] = 0  # the feature copies are zero on half of the map
    x[3] = 0
    weight = torch.randn(7, 6, 1, 1, generator=generator, dtype=torch.float64)
    call = ConvCall(x, weight, (stride, stride), (0, 0), (1, 1), 1)
    assert call.pointwise
    pool = OutputPool()
    actual, boxes = sparse_conv2d(call, dense_above, 8, results=pool)
    expected = F.conv2d(x, weight, stride=stride)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert_zero_outside(expected, boxes)
    # dense: every stride; sparse: the crops of stride 1 (strided crops stay conv2d)
    assert products if dense_above == 0.0 or stride == 1 else not products


def test_small_maps_keep_conv2d_for_pointwise_convolutions():
    x = torch.randn(2, 4, 9, 9)
    call = ConvCall(x, torch.randn(3, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    assert not call.pointwise  # 81 positions: narrow matrix products are slower
    assert ConvCall(torch.randn(2, 4, 10, 10), call.weight, (1, 1), (0, 0), (1, 1), 1).pointwise


def assert_zero_outside(values: torch.Tensor, boxes) -> None:
    """Every row of ``values`` is exactly zero outside its box."""
    assert len(boxes) == values.shape[0]
    for row, (r0, r1, c0, c1) in enumerate(boxes):
        outside = values[row].clone()
        if r1 > r0 and c1 > c0:
            outside[:, r0:r1, c0:c1] = 0
        assert not bool(outside.any()), f"row {row} is nonzero outside its box {(r0, r1, c0, c1)}"


class _RandomCNN(nn.Module):
    """Convolutions of drawn kernel, stride, padding and dilation (with or without bias),
    poolings, BatchNorm, ReLU and residual adds (in place or not) and a biased head."""

    def __init__(
        self,
        layers: list[tuple[int, int, int, int]],
        pool: str,
        inplace: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.inplace = inplace
        self.relu = nn.ReLU(inplace=inplace)
        self.convs = nn.ModuleList(
            nn.Conv2d(4 if i else 3, 4, k, stride=s, padding=p, dilation=d, bias=bias)
            for i, (k, s, p, d) in enumerate(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(4) for _ in layers)
        for norm in self.norms:
            with torch.no_grad():
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
                norm.bias.uniform_(-0.5, 0.5)
        self.pool = {"max": nn.MaxPool2d(2, 2), "avg": nn.AvgPool2d(3, 1, 1), "none": None}[pool]
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = self.relu(norm(conv(x)))
            if i and y.shape == x.shape:  # residual add where shapes allow
                if self.inplace:  # as torchvision's blocks: out += identity; relu_(out)
                    y += x
                    x = self.relu(y)
                else:
                    x = x + y
            else:
                x = y
            if i == 0 and self.pool is not None:
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))


@st.composite
def random_cnns(draw: st.DrawFn):
    """(model, x, mask): a float64 `_RandomCNN` on a 24x24 image and a grid or SAM-like mask."""
    layers = [
        (
            draw(st.integers(1, 5)),
            draw(st.integers(1, 2)),
            draw(st.integers(0, 2)),
            draw(st.integers(1, 2)),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    torch.manual_seed(draw(st.integers(0, 1000)))
    pool = draw(st.sampled_from(["max", "avg", "none"]))
    inplace, bias = draw(st.booleans()), draw(st.booleans())  # bias-free: as torchvision's
    model = _RandomCNN(layers, pool, inplace, bias).eval().double()
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    try:  # layers whose kernel outgrows a shrunk map are no model at all
        model(x)
    except RuntimeError:
        assume(False)
    mask = sam_like_mask(24, draw(st.integers(0, 100))) if draw(st.booleans()) else grid(24, 4)
    return model, x, mask


def grid(size: int, cells: int) -> torch.Tensor:
    """A cells x cells grid of square features."""
    index = torch.arange(size) * cells // size
    return (index.view(-1, 1) * cells + index.view(1, -1)).view(1, 1, size, size)


def sam_like_mask(size: int, seed: int) -> torch.Tensor:
    """One large background segment, and objects of nested sizes (a part inside an object)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, size, dtype=torch.long)
    label = 1
    for extent in (size // 2, size // 3, size // 5, size // 8 + 1):
        r, c = torch.randint(0, size - extent + 1, (2,), generator=generator).tolist()
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        blob = ((rows - r - extent / 2) ** 2 + (cols - c - extent / 2) ** 2) < (extent / 2) ** 2
        mask[blob] = label
        inner = blob & (rows < r + extent // 2)  # a nested part of the object
        if int(inner.sum()):
            mask[inner] = label + 1
        label += 2
    return mask.view(1, 1, size, size)


#: Sparse copies everywhere, on the spec's rules and sharing otherwise.
SPARSE_ONLY = Speedups(
    gradient_shortcut=False,
    copies_per_pass=None,
    fused_sharing=False,
    sparse_copies=True,
    sparse_dense_above=1.0,
)


@settings(max_examples=12, deadline=None)
@given(random_cnns(), st.sampled_from(MODES))
def test_random_cnns_give_the_dense_results(case, mode):
    model, x, mask = case
    # the spec's rules with sparse convolutions; the default speed-ups; and every convolution
    # and bias sharing inside the carried boxes, however much of the map they cover
    everywhere = replace(DEFAULT, sparse_dense_above=1.0)
    for speedups in (SPARSE_ONLY, DEFAULT, everywhere):
        assert_same_as_spec(model, x, mask, 1, mode, speedups)


def test_sparse_copies_are_off_in_the_spec_and_select_the_pass():
    from ctc_plugin.ctc.layout import CopyLayout
    from ctc_plugin.ctc.sharing import make_sharing
    from ctc_plugin.ctc.sparse import SparseGatedPass

    layout = CopyLayout(1, 2, reference_full=False, baseline=False)
    sharing = make_sharing("proportional")
    assert not SPEC.sparse_copies
    assert type(SPEC.gated_pass(layout, sharing)).__name__ == "GatedPass"
    sparse = replace(SPEC, sparse_copies=True)
    assert isinstance(sparse.gated_pass(layout, sharing), SparseGatedPass)
    # the gradient path carries one dense copy: never sparse
    assert not isinstance(sparse.gated_pass(layout, sharing, gradient=True), SparseGatedPass)


def test_unusual_arguments_are_computed_dense():
    """``padding="same"`` and a convolution with a bias go through the spec's linear rule."""
    from ctc_plugin.ctc.sparse import _conv_call

    x, w = torch.rand(2, 3, 8, 8), torch.rand(4, 3, 3, 3)
    assert _conv_call(F.conv2d, (x, w), {"padding": "same"}) is None
    assert _conv_call(F.conv2d, (x, w, torch.rand(4)), {}) is None
    assert _conv_call(F.conv2d, (x, w), {"stride": (2, 1)}) is not None


def test_a_convolution_grows_each_box_by_its_reach_only():
    """A 3x3 convolution with padding 1 reaches one row and column further on each side (the
    output box was once two too large on the low side: exact, but more work)."""
    x = torch.zeros(3, 2, 12, 12, dtype=torch.float64)
    x[0] = 1.0  # the whole map
    x[1, :, 4:7, 5:9] = torch.rand(2, 3, 4, dtype=torch.float64) + 0.5
    weight = torch.rand(2, 2, 3, 3, dtype=torch.float64) + 0.5
    call = ConvCall(x, weight, (1, 1), (1, 1), (1, 1), 1)
    out, boxes = sparse_conv2d(call, 1.0, 1)
    assert boxes == [(0, 12, 0, 12), (3, 8, 4, 10), (0, 0, 0, 0)]
    assert boxes == input_boxes(out)
    strided = ConvCall(x, weight, (2, 2), (1, 1), (1, 1), 1)
    assert sparse_conv2d(strided, 1.0, 1)[1][1] == (2, 4, 2, 5)  # rows 4-6 -> 3-7 -> 2-3


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_convolutions_above_the_threshold_are_products_on_each_copys_rows(
    monkeypatch, stride
):
    """Where the boxes are too large for crops, a 1x1 convolution is one matrix product per
    run of copies on their rows (``ConvCall.row_products``), written into reused memory that
    held another result: it equals ``conv2d`` and is zero outside the rows."""
    calls = []
    row_products = ConvCall.row_products
    monkeypatch.setattr(
        ConvCall, "row_products", lambda *args: calls.append(1) or row_products(*args)
    )
    generator = torch.Generator().manual_seed(4 + stride)
    x = torch.randn(6, 5, 24, 20, generator=generator, dtype=torch.float64)
    x[1:3, :, :7] = 0  # two copies on the lower rows, one on a band, one zero
    x[3, :, :4], x[3, :, 15:] = 0, 0
    x[4] = 0
    weight = torch.randn(3, 5, 1, 1, generator=generator, dtype=torch.float64)
    pool = OutputPool()
    for _ in range(2):  # the second call reuses the first result's memory
        call = ConvCall(x, weight, (stride, stride), (0, 0), (1, 1), 1)
        actual, boxes = sparse_conv2d(call, 0.0, 8, results=pool)
        torch.testing.assert_close(actual, F.conv2d(x, weight, stride=stride), rtol=0, atol=1e-12)
        assert_zero_outside(actual, boxes)
        actual.fill_(3.0)  # what the next call finds in the memory (not recorded)
        del actual
    assert len(calls) == 2


@linux_only
def test_each_pass_writes_the_memory_the_last_pass_left_and_stays_exact(monkeypatch):
    """Nine features in chunks of two: five passes in a call, and two calls. Only the first pass
    takes fresh memory for its results; the others write what the one before left (holding
    its values), and every score is the spec's."""
    from ctc_plugin.ctc import workspace

    fresh = []

    def counted_fresh_memory(nbytes, device):
        fresh.append(nbytes)
        return workspace_fresh_memory(nbytes, device)

    workspace_fresh_memory = workspace.fresh_memory
    monkeypatch.setattr(workspace, "fresh_memory", counted_fresh_memory)
    workspace.SPARE_CHUNKS.release()
    torch.manual_seed(3)
    model = _RandomCNN([(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1)], "max").eval().double()
    speedups = replace(DEFAULT, sparse_dense_above=1.0)
    for seed in (0, 1):
        x = torch.rand(
            1, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
        assert_same_as_spec(
            model, x, sam_like_mask(24, seed), 1, "reference", speedups, perturbations_per_eval=2
        )
        assert len(workspace.SPARE_CHUNKS) == 1
    assert len(fresh) == 1


class _FailsAfterAConvolution(nn.Module):
    """A convolution, BatchNorm and ReLU (results in the pass's memory), then an error."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.relu(self.body(x))
        raise RuntimeError("the model failed")


@linux_only
def test_a_pass_that_raises_still_leaves_its_memory_to_the_next():
    from ctc_plugin import CTC
    from ctc_plugin.ctc import workspace

    workspace.SPARE_CHUNKS.release()
    ctc = CTC(_FailsAfterAConvolution().eval())
    ctc._speedups = replace(DEFAULT, sparse_dense_above=1.0)
    with pytest.raises(RuntimeError, match="the model failed"):
        ctc.attribute(torch.rand(1, 3, 16, 16), target=0, feature_mask=grid(16, 2))
    assert len(workspace.SPARE_CHUNKS) == 1


class GlobalContext(nn.Module):
    """A map plus its own global average, broadcast over it, then a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.stem(x)))
        y = y + F.adaptive_avg_pool2d(y, 1)  # nonzero over the whole map for every copy
        y = F.relu(self.mix(y))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("mode", MODES)
def test_a_map_plus_a_term_broadcast_over_it_is_computed_on_the_whole_map(mode):
    """The sum carried the union of the map's boxes and the 1x1 one of the pooled term, so the
    next convolution ran inside a box too small: 1.8e-2 ("proportional") and 3.1e-1
    ("reference") of the largest score from the spec in float64 (outside review)."""
    torch.manual_seed(0)
    model = GlobalContext()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.2, 0.2)
        model.norm.bias.uniform_(-0.2, 0.2)
    model = model.double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.long)  # a large background, 8 small features
    for k in range(1, 9):
        row, column = 3 * k, (7 * k) % 28
        mask[..., row : row + 2, column : column + 3] = k
    for speedups in (DEFAULT, SPARSE, replace(DEFAULT, gradient_shortcut=False)):
        assert_same_as_spec(model, x, mask, 1, mode, speedups)
