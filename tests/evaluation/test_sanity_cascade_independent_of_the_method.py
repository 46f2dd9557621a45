"""The cascade's random layers are the same whatever the method explains with.

A method that draws from torch's generator (SmoothGrad, a Lime without a fixed seed) must not
move the stream the next layers are re-initialised from: else two methods compared step by step
would be explaining differently randomised models.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.evaluation.sanity import cascading_randomisation

from .test_sanity_randomisation import tiny_model as _model


def _recording_gradient(seen: list[list[torch.Tensor]], draws: int):
    """Input gradients; records the parameters of every model it explains; draws ``draws``."""

    def method(model, images, target, feature_mask):
        torch.rand(draws, device=images.device)  # the method's own randomness, unused
        seen.append([p.detach().clone() for p in model.parameters()])
        leaf = images.detach().clone().requires_grad_(True)
        score = model(leaf).gather(1, target[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, leaf)
        return gradient.sum(1, keepdim=True)

    return method


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_the_randomised_layers_do_not_depend_on_the_methods_own_draws(device):
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)).to(device)
    quiet: list[list[torch.Tensor]] = []
    drawing: list[list[torch.Tensor]] = []

    def cascade(seen, draws):
        method = _recording_gradient(seen, draws)
        return cascading_randomisation(method, _model().to(device), images, 0, seed=3)

    plain, noisy = cascade(quiet, 0), cascade(drawing, 100)
    assert len(quiet) == len(drawing) == 4  # the original model, then after each of 3 layers
    for step, (first, second) in enumerate(zip(quiet, drawing)):
        assert all(torch.equal(a, b) for a, b in zip(first, second)), f"step {step} differs"
    for a, b in zip(plain, noisy):
        assert a.layer == b.layer
        torch.testing.assert_close(a.correlation, b.correlation, rtol=0, atol=0)
