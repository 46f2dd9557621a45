"""``"proportional"`` shares a bias among copies whose magnitudes sum to a subnormal number.

HaloNet's attention can put (nearly) all of a query's weight on the zero padding of its halo,
so at some units of its output every copy, the gate copy included, is ~1e-317 in float64; the
BatchNorm after it shares its shift by ``|z_k| / sum_j |z_j|``. The fused sharing computed
``bias / sum_j |z_j|`` first, which leaves the format's range there (``0.03 / 1e-317``), and
the pass gave NaN scores (a ``FloatingPointError``) where the spec, dividing the magnitudes
first, gives finite shares that add up to the bias.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.ctc.fused_sharing import FusedProportionalSharing
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import make_sharing
from ctc_plugin.ctc.speedups import SPEC, Speedups

from .exactness import assert_exact_in_every_mode, feature_scores, random_case


class TinyChannels(nn.Module):
    """A convolution whose second half of channels is scaled by ``tiny``, then a BatchNorm."""

    def __init__(self, tiny: float) -> None:
        super().__init__()
        self.tiny = tiny
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor([1.0, 1.0, self.tiny, self.tiny], dtype=x.dtype).view(1, 4, 1, 1)
        return self.head(torch.relu(self.norm(self.conv(x) * scale)).mean((2, 3)))


def _case(tiny: float, dtype: torch.dtype):
    model, x, mask = random_case(lambda: TinyChannels(tiny), offsets={"norm.running_var": 2.0})
    return model.to(dtype), x.to(dtype), mask


def test_subnormal_sums_share_the_bias_as_the_spec_does() -> None:
    model, x, mask = _case(1e-315, torch.float64)
    assert_exact_in_every_mode(model, x, mask, 1)


@pytest.mark.parametrize("sparse", [True, False], ids=["on the copies' rows", "whole maps"])
@pytest.mark.parametrize("host_checks", [True, False], ids=["host checks", "no host sync"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_every_fused_path_adds_up(sparse: bool, host_checks: bool, dtype: torch.dtype) -> None:
    """With host checks (the units found first) and without (a GPU's path, no sync), on whole
    maps and on the rows of the copies' boxes."""
    tiny = 1e-315 if dtype == torch.float64 else 1e-41
    model, x, mask = _case(tiny, dtype)
    speedups = Speedups(host_checks=host_checks, sparse_copies=sparse)
    scores = feature_scores(model, x, mask, 1, "proportional", speedups).scores
    spec = feature_scores(model, x, mask, 1, "proportional", SPEC).scores
    logits = model(x)[:, 1].detach()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(scores.sum(1), logits, rtol=rtol, atol=rtol)
    torch.testing.assert_close(scores, spec, rtol=rtol * 10, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_shares_on_the_copies_rows_are_the_specs(dtype: torch.dtype) -> None:
    """The sharing on each copy's rows (a sparse pass's boxes known) rescales as well."""
    layout = CopyLayout(1, 3, reference_full=False, baseline=False)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, layout.copies, 2, 6, 4, generator=generator, dtype=dtype)
    z[:, :, 1, :3] *= 1e-315 if dtype == torch.float64 else 1e-41  # subnormal sums there
    boxes = [(0, 6, 0, 4), (0, 3, 0, 4), (2, 5, 0, 4), (3, 6, 0, 4)]
    for row, (r0, r1, _, _) in enumerate(boxes[1:], start=1):
        z[0, row, :, :r0], z[0, row, :, r1:] = 0.0, 0.0
    bias = torch.tensor([0.5, -3.0], dtype=dtype).view(2, 1, 1)
    expected = make_sharing("proportional").add_bias(z, bias, layout)
    actual = z.clone()
    FusedProportionalSharing(rows_fraction=1.0).add_bias_with_boxes(actual, bias, layout, boxes)
    assert torch.isfinite(actual).all()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * 1e-3)
