"""BatchNorm in one place: every BatchNorm type is known; its eval-mode affine map is exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.batchnorm import BATCH_NORM_TYPES, batch_norm_affine
from ctc_plugin.inputs import TrainingModeError, check_eval_mode

BATCH_NORMS = [
    (nn.BatchNorm1d, (5, 3)),
    (nn.BatchNorm1d, (5, 3, 7)),
    (nn.BatchNorm2d, (2, 3, 4, 4)),
    (nn.BatchNorm3d, (2, 3, 2, 3, 3)),
    (nn.SyncBatchNorm, (2, 3, 4, 4)),
    (nn.LazyBatchNorm2d, (2, 3, 4, 4)),
]


@pytest.mark.parametrize(("cls", "shape"), BATCH_NORMS)
def test_every_batch_norm_type_is_one(cls, shape):
    module = cls() if cls is nn.LazyBatchNorm2d else cls(3)
    assert isinstance(module, BATCH_NORM_TYPES)


@pytest.mark.parametrize("other", [nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.InstanceNorm2d(3)])
def test_other_norms_are_not(other):
    assert not isinstance(other, BATCH_NORM_TYPES)


@settings(max_examples=25)
@given(
    case=st.sampled_from(BATCH_NORMS[:5]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_the_affine_map_is_the_module_in_eval_mode(case, affine, seed, eps):
    cls, shape = case
    torch.manual_seed(seed)
    module = cls(3, eps=eps, affine=affine).double().eval()
    module.running_mean.uniform_(-2, 2)
    module.running_var.uniform_(0.1, 3)
    if affine:
        with torch.no_grad():
            module.weight.uniform_(-2, 2)
            module.bias.uniform_(-1, 1)
    x = torch.randn(shape, dtype=torch.float64)
    scale, shift = batch_norm_affine(
        module.running_mean, module.running_var, module.weight, module.bias, module.eps
    )
    view = (1, 3) + (1,) * (x.dim() - 2)
    assert torch.allclose(module(x), x * scale.view(view) + shift.view(view))


@pytest.mark.parametrize(("cls", "shape"), BATCH_NORMS[:5])
def test_a_batch_norm_in_training_mode_is_refused_by_the_shared_check(cls, shape):
    model = nn.Sequential(nn.Identity(), cls(3))
    with pytest.raises(TrainingModeError, match=cls.__name__):
        check_eval_mode(model)
    check_eval_mode(model.eval())
