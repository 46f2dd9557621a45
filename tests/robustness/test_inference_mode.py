"""Every attribution method serves code that runs its model under ``torch.inference_mode()``.

Inside inference mode new tensors are inference tensors (no version counter, no autograd), and
a tensor made there stays one outside it; a method must give exactly what it gives on ordinary
tensors, not a PyTorch error about version counters or ``requires_grad``. Serving code also
builds or loads its model under inference mode, so that its weights are inference tensors.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC, CTCAttributor, CTCComposite, IntegrativeCAM
from ctc_plugin.testing import RandomCNN

SIZE = 16


def grid_mask() -> torch.Tensor:
    rows = torch.arange(SIZE) * 4 // SIZE
    return (rows[:, None] * 4 + rows[None, :])[None, None]


def explain(method: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if method.startswith("ctc-"):
        ctc = CTC(model, bias_sharing=method[4:])
        return ctc.attribute(x, [0, 1], feature_mask=grid_mask())
    if method == "integrative-cam":
        return IntegrativeCAM(model).attribute(x, target=[0, 1])
    with CTCAttributor(model, CTCComposite(), feature_mask=grid_mask()) as attributor:
        return attributor(x, torch.eye(model.spec.classes)[[0, 1]])[1]


@pytest.mark.parametrize(
    "method", ["ctc-none", "ctc-proportional", "ctc-reference", "integrative-cam", "attributor"]
)
@pytest.mark.parametrize("where", ["inside inference mode", "inference tensor"])
def test_methods_run_under_inference_mode(method: str, where: str) -> None:
    model = RandomCNN(seed=1)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    expected = explain(method, model, x)
    if where == "inside inference mode":
        with torch.inference_mode():
            actual = explain(method, model, x.clone())
    else:
        with torch.inference_mode():
            inference_x = x.clone()
        actual = explain(method, model, inference_x)
    assert not actual.is_inference()
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)
    assert all(not p.is_inference() and p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "method", ["ctc-none", "ctc-proportional", "ctc-reference", "integrative-cam", "attributor"]
)
@pytest.mark.parametrize("where", ["outside", "inside inference mode"])
def test_methods_explain_a_model_made_under_inference_mode(method: str, where: str) -> None:
    """Its weights are inference tensors, which autograd cannot save ("none"'s gradient path)."""
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    expected = explain(method, RandomCNN(seed=1), x)
    with torch.inference_mode():
        served = RandomCNN(seed=1)
    assert all(p.is_inference() for p in served.parameters())
    if method == "integrative-cam":  # gradients through the weights: refused with the way out
        with pytest.raises(
            ValueError, match=r"inference tensors .*'stem.weight' is one.*assign=True"
        ):
            explain(method, served, x)
        served.load_state_dict({k: v.clone() for k, v in served.state_dict().items()}, assign=True)
    if where == "outside":
        actual = explain(method, served, x)
    else:
        with torch.inference_mode():
            actual = explain(method, served, x.clone())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_integrative_cams_advice_also_covers_buffers_the_state_dict_leaves_out():
    """timm's relative_position_index is such a buffer: reloading the state dict keeps it."""
    with torch.inference_mode():
        served = RandomCNN(seed=1)
        served.register_buffer("scale", torch.ones(1), persistent=False)
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"buffers the state dict leaves out \('scale'\)"):
        IntegrativeCAM(served).attribute(x, target=0)
    # the advice, followed: the state dict reloaded, then the buffers it leaves out cloned
    served.load_state_dict({k: v.clone() for k, v in served.state_dict().items()}, assign=True)
    with pytest.raises(ValueError, match=r"'scale' is one"):
        IntegrativeCAM(served).attribute(x, target=0)
    for m in served.modules():
        [setattr(m, n, b.clone()) for n, b in m.named_buffers(recurse=False)]
    expected = IntegrativeCAM(RandomCNN(seed=1)).attribute(x, target=0)
    torch.testing.assert_close(IntegrativeCAM(served).attribute(x, target=0), expected)
