"""The class-specific backbones on classifiers whose forward pools before the head (torchvision's).

torchvision's ResNets, DenseNets, EfficientNets and MobileNets pool and flatten in ``forward`` and
give their head (``fc``, ``classifier``) a vector. The backbone traces the copy with torch.fx and
runs the head on the feature map the forward pools.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.classifier_backbone import class_map_encoder
from ctc_plugin.explainer.network import Explainer

from .helpers import FAST


class PoolsInForward(nn.Module):
    """Pools in its forward in one of the ways classifiers write it, then ``self.fc``."""

    def __init__(self, pooling: str, classes: int = 3) -> None:
        super().__init__()
        self.pooling = pooling
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.features(x)
        if self.pooling == "mean":
            x = x.mean((2, 3))
        elif self.pooling == "functional":
            x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        elif self.pooling == "then dropout":
            x = F.dropout(torch.dropout(x.mean((2, 3)), 0.2, self.training), 0.2, self.training)
        elif self.pooling == "then a function named dropout":
            x = dropout(x.mean((2, 3)))
        elif self.pooling == "to 2x2":
            x = F.adaptive_avg_pool2d(x, 2).sum((2, 3))
        return self.fc(x)


@torch.fx.wrap
def dropout(x):
    """Not a dropout: it mixes the channels, so the head cannot be applied per position."""
    return x + x.mean(1, keepdim=True)


def _logits_are_the_mean_of_the_maps(model: nn.Module, head: str, classes: int) -> None:
    encoder = class_map_encoder(model, head, classes).eval()
    images = torch.rand(2, 3, 64, 48)
    maps = encoder(images)
    assert maps.dim() == 4 and maps.shape[:2] == (2, classes) and maps.shape[2] > 1
    torch.testing.assert_close(maps.mean((2, 3)), model(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "head"), [("resnet18", "fc"), ("efficientnet_b0", "classifier")])
def test_torchvision_class_maps_average_to_the_logits(name, head):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=4).eval()
    with torch.no_grad():  # torchvision starts some at zero
        [linear for linear in model.modules() if isinstance(linear, nn.Linear)][-1].bias.normal_()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    head_module = model.get_submodule(head)
    _logits_are_the_mean_of_the_maps(model, head, 4)
    assert model.get_submodule(head) is head_module  # the user's model is not rewired
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("pooling", ["mean", "functional", "then dropout"])
def test_pooling_written_in_the_forward_is_found(pooling):
    torch.manual_seed(0)
    _logits_are_the_mean_of_the_maps(PoolsInForward(pooling).eval(), "fc", 3)


@pytest.mark.parametrize("backbone", ["classifier", "classifier-gated"])
def test_an_explainer_of_a_torchvision_resnet_trains_saves_and_loads(tmp_path, backbone):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    explainer = Explainer(build_backbone(backbone, 3, classifier=model, head="fc"), 3)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    explainer.fit(model, [(images, labels)], epochs=1, **FAST)
    explainer.save(tmp_path / "explainer.pt")
    another = torchvision.models.resnet18(num_classes=3)
    loaded = Explainer.load(tmp_path / "explainer.pt", classifier=another)
    explainer.eval()
    torch.testing.assert_close(loaded.masks(images), explainer.masks(images))


def test_a_head_that_reads_positions_together_is_refused():
    with pytest.raises(TypeError, match=r"does not pool a feature map globally.*'fc'"):
        class_map_encoder(PoolsInForward("to 2x2"), "fc", 3)


def test_a_function_only_named_dropout_is_not_taken_for_one():
    with pytest.raises(TypeError, match=r"does not pool a feature map globally.*dropout"):
        class_map_encoder(PoolsInForward("then a function named dropout"), "fc", 3)


def test_a_forward_that_does_not_end_with_the_head_is_refused():
    class Doubles(PoolsInForward):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"does not end with its head 'fc'.*nn.Sequential\("):
        class_map_encoder(Doubles("mean"), "fc", 3)


def test_an_untraceable_forward_gets_the_way_out():
    class Branches(PoolsInForward):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    with pytest.raises(TypeError, match=r"torch.fx cannot trace.*nn.AdaptiveAvgPool2d\(1\)"):
        class_map_encoder(Branches("mean"), "fc", 3)


def test_a_classifier_in_training_mode_is_traced_as_in_eval():
    """EfficientNet's stochastic depth reads ``self.training`` in Python: traced in training mode
    it stayed on in the graph, and the masks changed from call to call."""
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=3).train()
    encoder = class_map_encoder(model, "classifier", 3)
    assert model.training and encoder.training  # the modes are kept
    encoder.eval()
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(encoder(images), encoder(images), rtol=0, atol=0)


def test_a_timm_head_with_functional_dropout_is_found():
    """timm's forward_head calls F.dropout when drop_rate > 0."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, drop_rate=0.2).eval()
    _logits_are_the_mean_of_the_maps(model, "fc", 3)


def test_a_timm_head_that_normalises_the_pooled_vector_is_refused_naming_the_norm():
    """The refusal named timm's pre_logits (an Identity, harmless), not the LayerNorm after
    the pooling that makes the head read the positions together."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3).eval()
    with pytest.raises(TypeError, match=r"inside the module 'head.norm' \(LayerNorm2d\)"):
        build_backbone("classifier", 3, classifier=model, head="head.fc")
