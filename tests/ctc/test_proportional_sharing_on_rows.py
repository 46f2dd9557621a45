"""``"proportional"`` sharing on each copy's rows: the spec's shares, and boxes that hold them.

With the copies' boxes known (a sparse pass), the fused ``"proportional"`` sharing on a CPU
computes ``|z_k|``, their sum and the shares only on each sharing copy's rows where those take
at most ``rows_fraction`` of the copies' rows. Units where every sharing copy is zero, inside
the rows or outside all of them, get equal shares as on whole maps, and the boxes it returns
widen over them.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.ctc.fused_sharing import FusedProportionalSharing
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import make_sharing


@st.composite
def boxed_layers(draw: st.DrawFn):
    """(z, bias, layout, boxes): each feature copy zero outside its box, boxes one per row."""
    examples, features = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    baseline = draw(st.booleans())
    layout = CopyLayout(examples, features, reference_full=False, baseline=baseline)
    if draw(st.booleans()):  # some examples without some features' copies
        presence = torch.rand(examples, layout.copies - 1, generator=_seeded(draw)) > 0.3
        layout = CopyLayout(examples, features, False, baseline, presence=presence)
    height, width, channels = draw(st.integers(1, 9)), draw(st.integers(1, 6)), 3
    generator = _seeded(draw)
    z = torch.randn(examples, layout.copies, channels, height, width, generator=generator)
    z = z.double() * (torch.rand(z.shape, generator=generator) > 0.3)
    boxes = []
    for row in range(examples * layout.copies):
        copy = row % layout.copies
        if copy == 0 or not layout.first_feature <= copy < layout.first_feature + layout.features:
            boxes.append((0, height, 0, width))  # the gate copy and a baseline copy: whole
            continue
        r0 = draw(st.integers(0, height))
        r1 = draw(st.integers(r0, height))
        c0 = draw(st.integers(0, width))
        c1 = draw(st.integers(c0, width))
        inside = torch.zeros(height, width, dtype=torch.bool)
        inside[r0:r1, c0:c1] = True
        z[row // layout.copies, copy] *= inside
        boxes.append((r0, r1, c0, c1))
    if draw(st.booleans()):  # every sharing copy zero at some units inside the boxes
        z[:, 1:, :, :, :1] = 0.0
    bias = torch.randn(channels, 1, 1, generator=generator, dtype=z.dtype)
    if draw(st.booleans()):
        bias = torch.tensor(0.7, dtype=z.dtype)
    return z, bias, layout, boxes


def _seeded(draw: st.DrawFn) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 10_000)))


@settings(max_examples=80, deadline=None)
@given(boxed_layers(), st.sampled_from([0.0, 0.5, 1.0]))
def test_shares_on_the_rows_are_the_specs_and_the_boxes_hold_the_result(layer, fraction):
    z, bias, layout, boxes = layer
    expected = make_sharing("proportional").add_bias(z, bias, layout)
    for block_elements in (1 << 18, 8):  # one block of channels, or one channel at a time
        sharing = FusedProportionalSharing(block_elements, rows_fraction=fraction)
        actual = z.clone()
        after = sharing.add_bias_with_boxes(actual, bias, layout, boxes)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        rows = actual.flatten(0, 1)
        for row, (r0, r1, c0, c1) in zip(rows, after, strict=True):
            outside = torch.ones(row.shape[-2:], dtype=torch.bool)
            outside[r0:r1, c0:c1] = False
            assert not row[:, outside].any()


def test_the_rows_are_used_where_they_take_at_most_the_fraction() -> None:
    layout = CopyLayout(1, 4, reference_full=False, baseline=False)
    z = torch.zeros(1, layout.copies, 2, 8, 3, dtype=torch.float64)
    half = [(0, 8, 0, 3)] + [(2 * k, 2 * k + 4, 0, 3) for k in range(4)]  # half the rows each
    bias = torch.ones(2, 1, 1, dtype=z.dtype)
    assert FusedProportionalSharing(rows_fraction=0.5)._sharing_rows(z, bias, half) is not None
    assert FusedProportionalSharing(rows_fraction=0.4)._sharing_rows(z, bias, half) is None
    per_copy = torch.ones(1, layout.copies - 1, 2, 1, 1, dtype=z.dtype)  # a bias per copy
    assert FusedProportionalSharing(rows_fraction=1.0)._sharing_rows(z, per_copy, half) is None
    without_checks = FusedProportionalSharing(rows_fraction=1.0, host_checks=False)
    assert without_checks._sharing_rows(z, bias, half) is None  # a GPU's path: no fallback sync
