"""``eval_mode`` switches a module to eval mode when any part of it is training, not only its top.

An explainer put in eval mode with one part switched back to training (``net.eval();
net.encoder.train()``) would otherwise run that part in training mode while explaining: its
BatchNorm statistics would move with every explained batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ctc_plugin import Explainer, ExplainerAttribution
from ctc_plugin.concurrency import eval_mode
from ctc_plugin.explainer.backbones import build_backbone
from tests.explainer.helpers import NUM_CLASSES, SIZE, classifier_with_head


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))


def test_a_submodule_in_training_mode_runs_in_eval_mode_and_keeps_its_statistics():
    net = _net().eval()
    net[1].train()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    with eval_mode(net):
        assert not any(module.training for module in net.modules())
        net(torch.rand(2, 3, 8, 8))
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert [module.training for module in net.modules()] == [False, False, True, True, True]


def test_a_module_wholly_in_eval_mode_is_left_alone():
    net = _net().eval()
    with eval_mode(net) as held:
        assert held is net and not any(module.training for module in net.modules())
    assert not any(module.training for module in net.modules())


def test_explaining_never_moves_the_statistics_of_an_explainer_part_in_training_mode():
    backbone = build_backbone(
        "classifier", NUM_CLASSES, classifier=classifier_with_head(), head="head", width=2
    )
    explainer = Explainer(backbone, NUM_CLASSES).eval()
    explainer.trained_steps.fill_(1)
    explainer.image_size.copy_(torch.tensor([SIZE, SIZE]))
    norms = [m for m in explainer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "the test needs an explainer with BatchNorm"
    norms[0].train()
    before = {name: value.clone() for name, value in explainer.state_dict().items()}
    ExplainerAttribution(classifier_with_head(), explainer).attribute(
        torch.rand(2, 3, SIZE, SIZE), target=1
    )
    for name, value in explainer.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert norms[0].training
