"""Operations of user-written classifiers that CTC followed wrongly, each pinned by a small model.

Found by an audit of plausible user modules: ``torch.cat``/``torch.stack`` given their tensors by
keyword, ``F.normalize`` over several dims, a constant that broadcasts the signal to a larger
shape (a pooled vector plus a positional map), ``F.feature_alpha_dropout`` in eval mode (the
identity) and max pooling of a map without a channel dim (torch pools each of its rows alone)
are exact in ``"proportional"`` (sum, spec, one image alone) and give their spec's
scores in the other modes; a linear layer whose bias depends on the input and a mean or sum over
dim 0 whose result happens to keep a multiple of the pass's rows are refused by name, with the
model left as it was.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_exact_in_every_mode, assert_refused, random_case

C = 8


class _Pooled(nn.Module):
    """A convolution, ``operation`` of its output, a 2 x 2 average pooling and a linear head.

    The pooling keeps positions apart, so an operation that centres over positions does not
    leave the head only rounding noise to read.
    """

    def __init__(self, operation) -> None:
        super().__init__()
        self.operation = operation
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.head = nn.Linear(C * 4, 2)
        self.register_buffer("position", torch.linspace(-1, 1, C * 64).view(1, C, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.operation(self, self.stem(x))
        return self.head(F.adaptive_avg_pool2d(y, 2).flatten(1))


def _assert_exact_in_every_mode(operation) -> None:
    """``"proportional"`` exact; ``"reference"`` and ``"none"`` give their spec's scores."""
    model, x, mask = random_case(lambda: _Pooled(operation))
    assert_exact_in_every_mode(model, x, mask, 0)


@pytest.mark.parametrize(
    "operation",
    [
        lambda m, y: torch.cat(tensors=[y[:, 4:], F.relu(y[:, :4])], dim=1),
        lambda m, y: torch.stack(tensors=[y, F.relu(y)], dim=1).sum(1),
    ],
    ids=["cat", "stack"],
)
def test_concatenation_with_its_tensors_by_keyword_is_exact(operation) -> None:
    _assert_exact_in_every_mode(operation)


@pytest.mark.parametrize("dim", [(2, 3), [1, 2]], ids=["tuple", "list"])
def test_normalize_over_several_dims_is_exact(dim) -> None:
    _assert_exact_in_every_mode(lambda m, y: F.relu(F.normalize(y, dim=dim)))


@pytest.mark.parametrize(
    "operation",
    [
        lambda m, y: F.relu(y.mean((2, 3), keepdim=True) + m.position),
        lambda m, y: F.relu(m.position - y.mean((2, 3), keepdim=True)),
        lambda m, y: F.relu(torch.add(y.mean(2, keepdim=True), m.position[0, 0], alpha=0.5)),
        lambda m, y: F.relu(torch.sub(y[:, :1], m.position, alpha=2.0)),
    ],
    ids=["pooled + map", "map - pooled", "rows + plane", "channel - map"],
)
def test_a_constant_that_broadcasts_the_signal_is_a_bias_of_every_unit(operation) -> None:
    _assert_exact_in_every_mode(operation)


def test_feature_alpha_dropout_in_eval_mode_is_the_identity() -> None:
    _assert_exact_in_every_mode(lambda m, y: F.feature_alpha_dropout(F.relu(y), 0.3) + y)


class _InputDependentBias(nn.Module):
    """A linear layer whose bias is computed from the input (a hypernetwork's)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return F.linear(y.mean((2, 3)), self.head.weight, y.amax((2, 3))[:, :2])


@pytest.mark.parametrize("images", [1, 2])
def test_a_linear_layer_whose_bias_depends_on_the_input_is_refused(images: int) -> None:
    model = _InputDependentBias().double().eval()
    x = torch.rand(images, 3, 8, 8, dtype=torch.float64)
    assert_refused(
        model, r"torch\.nn\.functional\.linear .*bias depends on the input", x=x,
        modes=("proportional", "reference", "none"),
    )  # fmt: skip


class _BatchCentred(nn.Module):
    """``z - reduce(z, 0)`` of flattened features: 640 values, a multiple of 4 and 5 rows."""

    def __init__(self, reduce) -> None:
        super().__init__()
        self.reduce = reduce
        self.stem, self.head = nn.Conv2d(3, 10, 3, padding=1), nn.Linear(640, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x).flatten(1)
        return self.head(F.relu(z - self.reduce(z)))


@pytest.mark.parametrize(
    "reduce",
    [lambda z: z.mean(0), lambda z: torch.sum(z, dim=0), lambda z: z.mean(dim=(0,))],
    ids=["mean(0)", "sum(dim=0)", "mean(dim=(0,))"],
)
def test_a_mean_or_sum_over_dim_zero_is_refused_whatever_the_sizes(reduce) -> None:
    # one image, three features: 4 rows (5 with "reference"'s whole-image copy) divide 640
    model = _BatchCentred(reduce).double().eval()
    mask = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])[None, None, :, None].expand(1, 1, 8, 8)
    assert_refused(model, r"over dim 0", mask=mask, modes=("proportional", "reference", "none"))


@pytest.mark.parametrize(
    "operation",
    [
        lambda m, y: F.max_pool2d(y.mean(1), 2).unsqueeze(1).expand(-1, C, -1, -1),
        lambda m, y: F.adaptive_max_pool2d(y.amin(1), 2).unsqueeze(1).expand(-1, C, -1, -1),
        lambda m, y: F.max_pool1d(y.mean((1, 2)), 2)[:, None, None, :].expand(-1, C, 8, -1),
    ],
    ids=["max_pool2d", "adaptive_max_pool2d", "max_pool1d"],
)
def test_max_pooling_of_a_map_without_channels_pools_each_copy_alone(operation) -> None:
    # torch pools an (N, H, W) map as one image of N channels: each row alone
    _assert_exact_in_every_mode(operation)


@pytest.mark.parametrize(
    "operation",
    [lambda m, y: y[::1, ::1], lambda m, y: y[0 : y.shape[0]], lambda m, y: y[-y.shape[0] :]],
    ids=["::1", "0:n", "-n:"],
)
def test_a_slice_of_the_batch_that_keeps_every_row_is_the_identity(operation) -> None:
    """Perceiver's image preprocessor slices ``inputs[::1, ::1]`` (meaning its spatial dims):
    every row kept, in order, is no selection of copies."""
    _assert_exact_in_every_mode(operation)


@pytest.mark.parametrize("operation", [lambda m, y: y[::2], lambda m, y: y[1:]], ids=["::2", "1:"])
def test_a_slice_of_the_batch_that_drops_rows_is_refused(operation) -> None:
    assert_refused(_Pooled(operation).double().eval(), "selects or slices copies")
