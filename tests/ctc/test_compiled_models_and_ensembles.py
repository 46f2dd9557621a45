"""CTC on a ``torch.compile``d model, and on ensembles averaged over a stack of outputs.

A compiled model gives the scores of the model it compiles; ``torch.stack(outputs).mean(0)``
(test-time augmentation, ensembles) is linear and explained, a reduction over the copies refused.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch._dynamo.eval_frame
import torchvision
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4).eval().double()


@pytest.mark.skipif(
    not hasattr(torch._dynamo.eval_frame, "_force_eager_nested_compile"),
    reason="this torch has no thread-local switch to run compiled code eagerly",
)
@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_a_compiled_model_gives_the_scores_of_the_model_it_compiles(resnet, mode):
    """``torch.compile(model)`` made dynamo trace the CTC mode's rules on fake tensors, which
    failed deep inside them (``TorchRuntimeError ... no attribute '_ctc_boxes'``) instead of
    scoring the features: the pass now runs the compiled model's own Python code."""
    model = resnet
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = random_partition(32, 32, 4, seed=1)
    compiled = torch.compile(model, backend="eager")
    expected = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    got = CTC(compiled, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(x), model(x))  # and it still runs compiled after


@pytest.fixture(scope="module")
def small() -> nn.Module:
    return RandomCNN(CNNSpec(residual=True, normalise=True), seed=3).double()


def _ensembles(model: nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def views(x: torch.Tensor) -> list[torch.Tensor]:
        return [model(x), model(x.flip(3))]

    return {
        "stack(outs).mean(0)": lambda x: torch.stack(views(x)).mean(0),
        "torch.sum(stack(outs), dim=0)": lambda x: torch.sum(torch.stack(views(x)), dim=0),
        "stack(outs, -1).mean(-1)": lambda x: torch.stack(views(x), -1).mean(-1),
        "stack(outs).mean(0, keepdim)[0]": lambda x: torch.stack(views(x)).mean(0, True)[0],
    }


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_an_ensemble_averaged_over_a_stack_is_explained(small, mode):
    """Test-time augmentation or an ensemble written ``torch.stack(outputs).mean(0)`` was
    refused ("the copies along dim 1, where a permute or transpose moved them"), although a
    mean over the stacked outputs is linear; it now gives the scores of the same ensemble
    written as a sum of outputs."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = random_partition(8, 8, 5, seed=1)
    ctc = CTC(lambda x: (small(x) + small(x.flip(3))) / 2, bias_sharing=mode)
    expected = ctc.attribute(x, 1, feature_mask=mask)
    for name, ensemble in _ensembles(small).items():
        got = CTC(ensemble, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
        scale = 2.0 if "sum" in name else 1.0
        torch.testing.assert_close(got, expected * scale, rtol=1e-10, atol=1e-12, msg=name)


MIXES = "reduces over dim 1, which holds the copies"
WHOLE = "reduces the whole tensor, the batch of copies with it"
MOVED = "holds the copies along dim 1, where a shape operation"


@pytest.mark.parametrize(
    ("reduction", "match"),
    [
        (lambda t: t.mean(), WHOLE),  # every dim, the copies' too
        (lambda t: t.sum(1), MIXES),
        (lambda t: torch.mean(t, (0, 1)), MIXES),
        (lambda t: t.amax(0), MOVED),  # a max's switches need the copies along dim 0
        (lambda t: torch.nn.functional.avg_pool1d(t, 1), MOVED),  # a rule needs dim 0
    ],
)
def test_a_reduction_over_the_copies_of_a_stack_is_refused(small, reduction, match):
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = random_partition(8, 8, 3, seed=1)
    forward = lambda x: reduction(torch.stack([small(x), small(x)])).reshape(-1, 1)  # noqa: E731
    with pytest.raises(UnsupportedOperationError, match=match):
        CTC(forward, bias_sharing="proportional").attribute(x, 0, feature_mask=mask)
