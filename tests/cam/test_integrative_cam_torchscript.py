"""TorchScript is refused wherever it runs, not only as ``forward_func`` itself.

A TorchScript module run by a Python module or function hides its operations: in a wrapper
(scripted features, a Python head) the stages inside were dropped silently (only the head's
convolution explained); behind a lambda the refusal said no convolution ran. Torch's global
forward pre-hooks fire for a ``ScriptModule`` called from Python: it is refused there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM

from .cam_models import tiny_cnn
from .test_integrative_cam_user_models import images

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


class _ScriptedFeatures(nn.Module):
    """tiny_cnn with its first stages scripted and the rest in Python."""

    def __init__(self) -> None:
        super().__init__()
        net = tiny_cnn()
        self.scripted = torch.jit.script(net.features[:7])
        self.rest, self.head = net.features[7:], net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rest(self.scripted(x)))


def test_a_module_running_a_scripted_submodule_is_refused() -> None:
    with pytest.raises(TypeError, match="TorchScript"):
        IntegrativeCAM(_ScriptedFeatures().eval()).attribute(images(), target=1)


def test_a_function_running_a_scripted_model_is_refused_naming_torchscript() -> None:
    scripted = torch.jit.script(tiny_cnn())
    with pytest.raises(TypeError, match="TorchScript"):
        IntegrativeCAM(lambda x: scripted(x)).attribute(images(), target=1)
