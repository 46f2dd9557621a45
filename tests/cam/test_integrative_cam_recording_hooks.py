"""Hooks and checks that only read a layer's output leave Integrative CAM's maps as they are.

A stage is a convolution with the BatchNorm and ReLU that are the only users of its output.
Any call on the output counted as a use, so a forward hook that recorded ``o.detach()`` (or a
live pytorch-grad-cam object, whose hook records ``output.cpu().detach()``), or an
``assert torch.isfinite(h).all()`` in ``forward``, split a conv/BN/ReLU stage in two and
moved the fused map by up to 0.9 on maps in [0, 1].
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.testing import RandomCNN

RECORDINGS = {
    "the output itself": lambda stored, o: stored.append(o),
    "detach": lambda stored, o: stored.append(o.detach()),
    "cpu then detach": lambda stored, o: stored.append(o.cpu().detach()),
    "a copy then detach": lambda stored, o: stored.append(o.to(torch.float64).detach()),
    "retain_grad": lambda stored, o: o.retain_grad(),
    "a finiteness check": lambda stored, o: stored.append(bool(torch.isfinite(o).all())),
    "a comparison": lambda stored, o: stored.append((o > 0).float().mean().item()),
    "under no_grad": lambda stored, o: stored.append(_no_grad_mean(o)),
}


def _no_grad_mean(o: torch.Tensor) -> float:
    with torch.no_grad():
        return o.mean().item()


def _maps(model: nn.Module, x: torch.Tensor):
    return IntegrativeCAM(model).attribute(x, 1, return_layer_maps=True)


@pytest.mark.parametrize("layer", ["stem", "blocks.0.conv"])
@pytest.mark.parametrize("recording", sorted(RECORDINGS))
def test_a_recording_forward_hook_changes_no_map(layer, recording):
    model = RandomCNN(seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, plain_layers = _maps(model, x)
    stored: list = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: RECORDINGS[recording](stored, output)
    )
    try:
        hooked, hooked_layers = _maps(model, x)
    finally:
        handle.remove()
    assert stored or recording == "retain_grad"
    assert hooked_layers.steps == plain_layers.steps
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)


def test_a_live_pytorch_grad_cam_object_changes_no_map():
    from pytorch_grad_cam import GradCAM

    model = RandomCNN(seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = IntegrativeCAM(model).attribute(x, 1)
    grad_cam = GradCAM(model=model, target_layers=[model.stem, model.blocks[0].conv])
    try:
        torch.testing.assert_close(IntegrativeCAM(model).attribute(x, 1), plain, rtol=0, atol=0)
    finally:
        grad_cam.activations_and_grads.release()


class _Checked(nn.Module):
    """A conv/BN/ReLU stage whose forward checks the convolution's output for NaN."""

    def __init__(self, check: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.check = check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.check:
            assert torch.isfinite(h).all()
        return self.head(torch.relu(self.norm(h)).mean((2, 3)))


def test_a_check_in_forward_changes_no_map():
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    plain, plain_layers = _maps(_Checked(False).eval(), x)
    checked, checked_layers = _maps(_Checked(True).eval(), x)
    assert checked_layers.steps == plain_layers.steps == [("conv", "bn", "relu")]
    torch.testing.assert_close(checked, plain, rtol=0, atol=0)


def test_a_computation_with_gradient_on_the_output_is_a_use():
    """The documented boundary: ``o.mean()`` passes the output's gradient on, as a second
    branch of the model would; the convolution is a stage of its own (record ``o.detach()``)."""
    model = RandomCNN(seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stored: list = []
    handle = model.blocks[0].conv.register_forward_hook(
        lambda module, inputs, output: stored.append(output.mean())
    )
    try:
        _, layers = _maps(model, x)
    finally:
        handle.remove()
    assert ("conv",) in layers.steps and ("bn", "relu") in layers.steps


class _UsedAgain(nn.Module):
    """conv -> BN -> ReLU, the convolution's output (or a copy of it) used again afterwards."""

    def __init__(self, again) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head, self.again = nn.Linear(4, 3), again

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        side = self.again(h)
        out = torch.relu(self.norm(h))
        return self.head((out + torch.relu(side)).mean((2, 3)))


@pytest.mark.parametrize(
    "again", [lambda h: h, lambda h: h.clone(), lambda h: h.to(torch.float64).float()]
)
def test_a_map_used_again_after_its_batch_norm_took_it_is_refused(again):
    """Was: the conv, BN and ReLU one stage (a copy made before the BN was followed as a read,
    and a direct use after it was not seen), the map of a model that is no such chain."""
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"the map of .* is used again, by .*layers=\["):
        IntegrativeCAM(_UsedAgain(again).eval()).attribute(x, 1)


def test_a_hook_that_changes_its_own_copy_in_place_changes_no_map():
    """``c = out.clone(); c.clamp_(min=0)`` in a hook, or a copy stored before the BatchNorm and
    scaled in place after it: a write into the hook's own copy counted as a use of the map."""
    model = RandomCNN(seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = IntegrativeCAM(model).attribute(x, 1)
    stored: list = []

    def scale_the_copy(module, inputs, output) -> None:
        stored[-1].mul_(2)

    handles = [
        model.blocks[0].conv.register_forward_hook(
            lambda m, i, o: stored.append(o.clone().clamp_(min=0))
        ),
        model.blocks[0].norm.register_forward_hook(scale_the_copy),
    ]
    try:
        hooked = IntegrativeCAM(model).attribute(x, 1)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
