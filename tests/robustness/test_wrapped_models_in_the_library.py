"""The methods given ``torch.compile(model)``, ``model.compile()`` or ``nn.DataParallel(model)``.

Captum users often hold their model compiled or wrapped for several GPUs. On this machine's one
device ``DataParallel`` calls the model it holds, and a compiled model computes what the model
it compiles computes; the methods' messages name the model's own module paths, not torch's
wrapper level (``_orig_mod.``, ``module.``).

Compiling is slow on a CPU: the compiled models here use the ``"eager"`` backend (dynamo traces
them, nothing is generated), which shows every effect of tracing without a compiler.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM, TrainingModeError, UnsupportedOperationError
from ctc_plugin.images import ImagePreprocessing
from ctc_plugin.module_paths import module_path, path_as_given
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

WRAPPERS = {
    "torch.compile": lambda model: torch.compile(model, backend="eager"),
    "DataParallel": nn.DataParallel,
}


def _model() -> RandomCNN:
    return RandomCNN(CNNSpec(residual=True), seed=0)


class Atan(nn.Module):
    """``torch.atan``, which CTC has no rule for: it refuses the call, naming the module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The arc tangent."""
        return torch.atan(x)


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
@pytest.mark.parametrize("method", [CTC, IntegrativeCAM])
def test_the_eval_mode_check_names_the_models_own_path_inside_a_wrapper(wrap, method):
    """It named ``'_orig_mod.blocks.0.norm'`` and ``'module.blocks.0.norm'``."""
    model = _model()
    model.blocks[0].norm.train()
    mask = random_partition(8, 8, 3)
    with pytest.raises(TrainingModeError) as caught:
        arguments = {"feature_mask": mask} if method is CTC else {}
        method(wrap(model)).attribute(torch.rand(1, 3, 8, 8), 0, **arguments)
    message = str(caught.value)
    assert "'blocks.0.norm'" in message, message


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
def test_a_ctc_refusal_names_the_models_own_path_inside_a_wrapper(wrap):
    """It named ``in _orig_mod.blocks.1.act (Atan)``, ``in module.blocks.1.act``."""
    model = _model()
    model.blocks[1].act = Atan()
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(wrap(model)).attribute(
            torch.rand(1, 3, 8, 8), 0, feature_mask=random_partition(8, 8, 3)
        )
    message = str(caught.value)
    assert "in blocks.1.act (Atan)" in message, message


def test_paths_leave_out_torch_wrappers_wherever_they_sit():
    model = _model()
    block = model.blocks[0]
    model.blocks[0] = torch.compile(block, backend="eager")  # a submodule compiled
    assert module_path(model, block.conv) == "blocks.0.conv"
    assert module_path(model, block) == "blocks.0"
    parallel = nn.DataParallel(model)
    assert module_path(parallel, block.norm) == "blocks.0.norm"
    assert (
        path_as_given(parallel, "module.blocks.0._orig_mod.conv.weight") == "blocks.0.conv.weight"
    )
    assert path_as_given(parallel, "module") == ""
    normalised = ImagePreprocessing(mean=(0.5,) * 3, std=(0.2,) * 3).wrap(parallel)
    assert module_path(normalised, block.conv) == "blocks.0.conv"
    assert module_path(normalised, normalised[0]) == "(input step)"
    outside = nn.DataParallel(normalised)  # the normalisation inside a wrapper too
    assert path_as_given(outside, "module.1.module.head.bias") == "head.bias"
    assert path_as_given(outside, "module.0") == "(input step)"
    assert path_as_given(model, "blocks.0._orig_mod") == "blocks.0"
    assert path_as_given(model, "not.a.path") == "not.a.path"
