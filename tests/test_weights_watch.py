"""WeightsWatch: a cheap repeated look at whether a module's weights changed."""

from __future__ import annotations

import copy
import gc
import pickle
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ctc_plugin.module_state import DigestMemo, WeightsWatch, state_digest


class _CountedOperations(TorchDispatchMode):
    """Counts the tensor operations (ATen operators) run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.operations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operations += 1
        return func(*args, **(kwargs or {}))


def _deep_model(layers: int = 40) -> nn.Module:
    blocks = [nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)) for _ in range(layers)]
    return nn.Sequential(*blocks).eval()


def test_a_look_at_unchanged_weights_costs_a_few_operations_not_a_few_per_tensor():
    """The look ran about four operations per tensor (over 1000 here) and doubled the cost of an
    Explainer call on the zoo's models; it reads all kept values with one concatenation."""
    model = _deep_model()
    memo = DigestMemo()
    first = memo.digest(model)
    with _CountedOperations() as counted:
        assert memo.digest(model) == first
    assert len(model.state_dict()) == 280
    assert counted.operations <= 8, counted.operations


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda p: p.data.normal_(), id="re-initialised through .data"),
        pytest.param(lambda p: p.data.copy_(torch.randn_like(p)), id="copied through .data"),
        pytest.param(lambda p: p.data.mul_(2.0), id="scaled through .data"),
        pytest.param(lambda p: torch.nn.init.kaiming_normal_(p), id="init (no_grad, in place)"),
        pytest.param(lambda p: p.requires_grad_(False).add_(1.0), id="in place"),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_write_to_a_weight_is_seen_in_any_memory_format(write, channels_last):
    model = _deep_model(2)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        assert not model[0][0].weight.is_contiguous()
    watch = WeightsWatch(model)
    assert watch.unchanged(model)
    write(model[1][0].weight)
    assert not watch.unchanged(model)
    assert not watch.unchanged(model)  # a change stays a change


def test_replaced_and_loaded_weights_and_another_module_are_seen():
    model, other = _deep_model(2), _deep_model(2)
    watch = WeightsWatch(model)
    assert not watch.unchanged(other)
    watch = WeightsWatch(model)
    model.load_state_dict(other.state_dict())
    assert not watch.unchanged(model)
    watch = WeightsWatch(model)
    model[0][0].weight = nn.Parameter(model[0][0].weight.detach().clone())
    assert not watch.unchanged(model)
    watch = WeightsWatch(model)
    model.double()
    assert not watch.unchanged(model)


def test_buffers_that_are_not_dense_and_nan_weights_are_watched():
    model = nn.Module()
    model.register_buffer("expanded", torch.zeros(3, 1).expand(3, 5))
    model.register_buffer("sliced", torch.zeros(6, 6)[::2, 1:])
    model.register_buffer("nan", torch.full((4,), float("nan")))
    model.register_buffer("empty", torch.zeros(0))
    watch = WeightsWatch(model)
    assert watch.unchanged(model)  # NaN equals NaN bit for bit
    model.sliced.data[-1, -1] = 1.0
    assert not watch.unchanged(model)
    watch = WeightsWatch(model)
    model.expanded.data[0, 0] = 1.0  # a corner of the expanded view, through .data
    assert not watch.unchanged(model)


def test_the_digest_follows_a_write_through_data():
    model = _deep_model(2)
    memo = DigestMemo()
    before = memo.digest(model)
    model[0][0].weight.data.normal_()
    assert memo.digest(model) == state_digest(model) != before


def test_weights_replaced_are_let_go_once_the_watch_has_seen_it():
    model = _deep_model(1)
    watch = WeightsWatch(model)
    old = weakref.ref(model[0][0].weight)
    model[0][0].weight = nn.Parameter(torch.zeros_like(model[0][0].weight))
    gc.collect()
    assert not watch.unchanged(model)
    gc.collect()
    assert old() is None


@pytest.mark.parametrize("copier", [pickle.dumps, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_a_copied_memo_carries_no_weights_and_digests_again(copier):
    model = nn.Linear(1000, 1000)
    memo = DigestMemo()
    digest = memo.digest(model)
    if copier is pickle.dumps:
        assert len(copier(memo)) < 10_000  # the views would carry the 4 MB storage along
        copied = pickle.loads(copier(memo))
    else:
        copied = copier(memo)
    watch = copied._memo[0]
    assert watch._samples is None and watch._values is None  # no views, no storages copied
    assert copied.digest(model) == digest


def test_entries_every_state_dict_makes_anew_are_compared_by_value():
    """A quantized layer's state dict makes its scale and zero point anew at every call: the
    watch found every look changed, and the classifier check hashed the model on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantize_dynamic
        model = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), {nn.Linear}
        )
    memo = DigestMemo()
    first = memo.digest(model)
    watch = WeightsWatch(model)
    assert watch.unchanged(model) and watch.unchanged(model)
    with _CountedOperations() as counted:
        assert memo.digest(model) == first
    assert counted.operations < 100, counted.operations  # no hash of every value


def test_sparse_buffers_are_watched_and_digested():
    model = nn.Module()
    model.register_buffer("sparse", torch.eye(4).to_sparse())
    watch = WeightsWatch(model)
    assert watch.unchanged(model)
    digest = state_digest(model)
    model.sparse = torch.eye(4).mul(2).to_sparse()
    assert not watch.unchanged(model)
    assert state_digest(model) != digest
