"""Boxes around each copy's nonzero values, carried through the pass (ctc_plugin.ctc.boxes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.boxes import Window, union_boxes, window_boxes
from ctc_plugin.ctc.sharing import ReferenceSharing

from .conftest import cases


def _support(values: torch.Tensor) -> slice | None:
    """The smallest slice holding the nonzero values of a 1-D tensor."""
    where = values.nonzero().flatten()
    return slice(int(where[0]), int(where[-1]) + 1) if len(where) else None


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 24),
    data=st.data(),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    pool=st.booleans(),
)
def test_window_boxes_hold_every_output_the_box_reaches(size, data, kernel, stride, dilation, pool):
    """Against convolutions and max-poolings of a box's indicator (ones in the box)."""
    start = data.draw(st.integers(0, size - 1))
    stop = data.draw(st.integers(start + 1, size))
    if pool:  # torch wants padding <= half the kernel
        padding = data.draw(st.integers(0, kernel // 2))
        ceil_mode = data.draw(st.booleans())
    else:
        padding = data.draw(st.integers(0, 4))
    if size + 2 * padding < dilation * (kernel - 1) + 1:
        return  # no output at all
    indicator = torch.zeros(1, 1, size, dtype=torch.float64)
    indicator[..., start:stop] = 1.0
    if pool:
        out = F.max_pool1d(indicator, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        ones = torch.ones(1, 1, kernel, dtype=torch.float64)
        out = F.conv1d(indicator, ones, stride=stride, padding=padding, dilation=dilation)
    window = Window.of(kernel, stride, padding, dilation, 1)
    (box,) = window_boxes([(slice(start, stop),)], window, (out.shape[-1],))
    actual = _support(out[0, 0])
    if actual is None:
        assert box is None or dilation > 1
        return
    assert box is not None and box[0].start <= actual.start and actual.stop <= box[0].stop
    if dilation == 1:  # no gaps in the window: the box is the smallest one
        assert box[0] == actual


def test_window_arguments_are_normalised():
    assert Window.of(3, None, 1, 1, 2) == Window((3, 3), (3, 3), (1, 1), (1, 1))
    assert Window.of((3, 5), [], "same", 2, 2) == Window((3, 5), (3, 5), (2, 4), (2, 2))
    assert Window.of(3, (2,), "valid", (1,), 2) == Window((3, 3), (2, 2), (0, 0), (1, 1))
    assert Window.of((3, 3), 1, 0, 1, 3) is None  # two sizes for three spatial dims
    assert Window.of(3, 1, "circular", 1, 2) is None


def test_union_boxes():
    a = [(slice(1, 3), slice(0, 2)), None, None]
    b = [(slice(2, 5), slice(1, 2)), (slice(0, 1), slice(0, 1)), None]
    assert union_boxes(a, b) == [(slice(1, 5), slice(0, 2)), (slice(0, 1), slice(0, 1)), None]


def _grid(size: int, cells: int) -> torch.Tensor:
    rows = torch.arange(size) * cells // size
    return (rows.view(-1, 1) * cells + rows.view(1, -1)).view(1, 1, size, size)


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from([2, 3]))
def test_carried_boxes_hold_every_nonzero_value_and_change_no_score(case, cells):
    """At every biased layer of random nets (BatchNorm, residuals, concatenation, max-pooling),
    each copy is zero outside its carried box; scores equal those of the search per layer."""
    model, x, _, target = case
    mask = _grid(x.shape[-1], cells)  # compact features: boxes smaller than the image
    seen = []
    original = ReferenceSharing.add_bias

    def checking(self, z, bias, layout, boxes=None):
        if boxes is not None:
            seen.append(len(boxes))
            rows = z.flatten(0, 1)
            for row, box in zip(rows, boxes):
                outside = row.clone()
                if box is not None:
                    outside[(slice(None), *box)] = 0.0
                assert not outside.any(), "a nonzero value outside its copy's box"
        return original(self, z, bias, layout, boxes)

    carried, searched = (CTC(model, bias_sharing="reference") for _ in range(2))
    searched.track_boxes = False
    for ctc in (carried, searched):
        ctc.sharing.crop_fraction = 1.0  # the boxed formula wherever boxes are known
    ReferenceSharing.add_bias = checking
    try:
        actual = carried.attribute(x, target=target, feature_mask=mask)
    finally:
        ReferenceSharing.add_bias = original
    expected = searched.attribute(x, target=target, feature_mask=mask)
    assert seen, "no layer got carried boxes"
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "none"])
def test_only_the_reference_sharing_carries_boxes(mode):
    """The other modes do not use boxes (proportional shares can be nonzero outside them)."""
    model, x, mask, target = (
        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval(),
        torch.rand(1, 3, 6, 6),
        _grid(6, 2),
        0,
    )
    seen = []
    ctc = CTC(model, bias_sharing=mode)
    ctc.gradient_fast_path = False
    original = type(ctc.sharing).add_bias

    def recording(self, z, bias, layout, boxes=None):
        seen.append(boxes)
        return original(self, z, bias, layout, boxes)

    type(ctc.sharing).add_bias = recording
    try:
        ctc.attribute(x, target=target, feature_mask=mask)
    finally:
        type(ctc.sharing).add_bias = original
    assert seen and all(boxes is None for boxes in seen)


def test_a_functional_convolution_called_with_keywords_carries_the_boxes():
    weight, bias, head = torch.randn(4, 3, 3, 3), torch.ones(4), torch.randn(2, 4)

    def forward(x):
        out = F.relu(torch.conv2d(input=x, weight=weight, bias=bias, padding=1))
        return F.linear(out.mean(dim=(2, 3)), head)

    x, mask = torch.rand(1, 3, 8, 8), _grid(8, 2)
    seen = []
    original = ReferenceSharing.add_bias

    def recording(self, z, bias, layout, boxes=None):
        seen.append(boxes)
        return original(self, z, bias, layout, boxes)

    carried, searched = (CTC(forward, bias_sharing="reference") for _ in range(2))
    searched.track_boxes = False
    ReferenceSharing.add_bias = recording
    try:
        actual = carried.attribute(x, target=0, feature_mask=mask)
    finally:
        ReferenceSharing.add_bias = original
    assert seen[0] is not None  # the convolution's output got boxes
    torch.testing.assert_close(actual, searched.attribute(x, target=0, feature_mask=mask))
