"""Every metric that runs the model refuses one in training mode, before it runs (and so do the
public helpers that run it: the shifted copy and the layers of the cascade).

A BatchNorm in training mode normalises with each forward's own batch statistics and updates
its running ones: a metric would change the model, and its numbers would depend on the batch
size. The metrics refuse it as the attribution methods do, and the model is left as it was.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.evaluation.faithfulness import perturbation_curve
from ctc_plugin.evaluation.invariance import first_layer_shift, input_invariance, shifted_model
from ctc_plugin.evaluation.protocol import run_protocol
from ctc_plugin.evaluation.sanity import cascading_randomisation, parameter_layers
from ctc_plugin.evaluation.sensitivity import max_sensitivity
from ctc_plugin.inputs import TrainingModeError
from ctc_plugin.testing import RandomCNN


def _saliency(model, images, targets, feature_mask):
    images = images.clone().requires_grad_(True)
    model(images).gather(1, targets[:, None]).sum().backward()
    return images.grad.abs().sum(1, keepdim=True)


METRICS = {
    "perturbation_curve": lambda m, x: perturbation_curve(m, x, 0, torch.rand(2, 8, 8), steps=4),
    "input_invariance": lambda m, x: input_invariance(_saliency, m, x),
    "run_protocol": lambda m, x: run_protocol(_saliency, m, x, perturbations=[("gaussian", 0.01)]),
    "max_sensitivity": lambda m, x: max_sensitivity(_saliency, m, x, n_samples=2),
    "cascading_randomisation": lambda m, x: cascading_randomisation(_saliency, m, x, max_steps=1),
    "shifted_model": lambda m, x: shifted_model(m, 0.1, x),
    "first_layer_shift": lambda m, x: first_layer_shift(m, 0.1, x),
    "parameter_layers": lambda m, x: parameter_layers(m, x),
}


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_a_model_in_training_mode_is_refused_and_left_as_it_was(metric):
    model = RandomCNN(seed=0).train()
    x = torch.rand(2, 3, 8, 8)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(TrainingModeError, match=r"call model\.eval\(\) first"):
        METRICS[metric](model, x)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    METRICS[metric](model.eval(), x)  # in eval mode it runs
