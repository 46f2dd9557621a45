"""The class-specific backbone: a trainable copy of the classifier with its head per position."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.classifier_backbone import ClassifierBackbone, PerPositionHead
from ctc_plugin.explainer.network import Explainer

from .helpers import NUM_CLASSES, SIZE, classifier_with_head, tuple_loader


def test_linear_head_per_position_averages_to_the_logits():
    model = classifier_with_head()
    features = model.features(torch.rand(4, 3, SIZE, SIZE))
    maps = PerPositionHead(model.head)(features)
    assert maps.shape == (4, NUM_CLASSES, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), model.head(features))


def test_mlp_head_per_position_equals_the_head_at_each_position():
    model = classifier_with_head(mlp=True)
    features = model.features(torch.rand(2, 3, SIZE, SIZE))
    maps = PerPositionHead(model.head)(features)
    # at one position the head sees exactly that position's feature vector
    one_position = features[:, :, 3:4, 5:6]
    torch.testing.assert_close(maps[:, :, 3, 5], model.head(one_position))


def test_heads_that_cannot_run_per_position_are_errors():
    with pytest.raises(TypeError, match=r"head module 2 \(BatchNorm1d\)"):
        PerPositionHead(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2))
        )
    with pytest.raises(TypeError, match="not 1x1"):
        PerPositionHead(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)))
    with pytest.raises(TypeError, match="no Linear layer"):
        PerPositionHead(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(ValueError, match="feature map"):
        PerPositionHead(nn.Linear(4, 2))(torch.rand(3, 4))


def test_backbone_starts_from_the_class_activation_maps_and_keeps_the_classifier():
    model = classifier_with_head()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backbone = ClassifierBackbone(model, "head", NUM_CLASSES, width=2, depth=2)
    assert backbone.encoder is not model and backbone.encoder.features is not model.features
    x = torch.rand(2, 3, SIZE, SIZE)
    cam = PerPositionHead(model.head)(model.features(x))
    cam = nn.functional.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    backbone.eval()
    torch.testing.assert_close(backbone(x), cam + backbone.refine(x))
    with torch.no_grad():  # scale and offset act on the class maps before they are resized:
        backbone.scale.fill_(1.7)  # bit for bit the arithmetic the shipped files trained with
        backbone.offset.copy_(torch.linspace(-1.0, 1.0, NUM_CLASSES))
        cam = PerPositionHead(model.head)(model.features(x))
        cam = cam * backbone.scale + backbone.offset[None, :, None, None]
        cam = nn.functional.interpolate(cam, size=(SIZE, SIZE), mode="bilinear")
        torch.testing.assert_close(backbone(x), cam + backbone.refine(x), rtol=0, atol=0)
    # training the copy moves neither the classifier's weights nor its BatchNorm statistics
    backbone.train()
    backbone(x).sum().backward()
    torch.optim.SGD(backbone.parameters(), lr=0.1).step()
    backbone(x)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_a_frozen_classifier_still_gives_a_trainable_copy():
    model = classifier_with_head().requires_grad_(False)
    backbone = ClassifierBackbone(model, "head", NUM_CLASSES)
    assert all(p.requires_grad for p in backbone.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_backbone_errors_name_the_problem():
    model = classifier_with_head()
    with pytest.raises(ValueError, match=r"no submodule 'fc'.*\['features', 'head'\]"):
        ClassifierBackbone(model, "fc", NUM_CLASSES)
    with pytest.raises(ValueError, match="outputs 3 classes, the explainer has 5"):
        ClassifierBackbone(model, "head", 5)

    class Reshaped(nn.Module):  # its forward does more after the head
        def __init__(self) -> None:
            super().__init__()
            self.inner = classifier_with_head()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).flatten(1)

    with pytest.raises(ValueError, match=r"not \(N, 3, h, w\) class maps"):
        ClassifierBackbone(Reshaped(), "inner.head", NUM_CLASSES)(torch.rand(1, 3, SIZE, SIZE))


def test_explainer_with_classifier_backbone_trains_saves_and_loads(tmp_path):
    model = classifier_with_head()
    torch.manual_seed(0)
    explainer = Explainer(
        build_backbone("classifier", NUM_CLASSES, classifier=model, head="head"), NUM_CLASSES
    )
    explainer.fit(model, tuple_loader(8), epochs=1, show_progress=False)
    path = explainer.save(tmp_path / "cs.pt")
    assert Explainer.load(path, classifier=model).config()["head"] == "head"
    other_weights = classifier_with_head(seed=7)  # only the architecture is taken from it
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(Explainer.load(path, classifier=other_weights)(x), explainer(x))
    with pytest.raises(ValueError, match="pass classifier="):
        Explainer.load(path)


def test_classifier_backbone_needs_its_classifier_and_only_it_takes_one():
    model = classifier_with_head()
    with pytest.raises(ValueError, match="'classifier' needs classifier= and head="):
        Explainer(build_backbone("classifier", NUM_CLASSES), NUM_CLASSES)
    with pytest.raises(ValueError, match="'classifier' needs head="):
        Explainer(build_backbone("classifier", NUM_CLASSES, classifier=model), NUM_CLASSES)
    with pytest.raises(
        ValueError, match="'unet-small' does not take classifier=, head=; it takes in_channels="
    ):
        Explainer(
            build_backbone("unet-small", NUM_CLASSES, classifier=model, head="head"), NUM_CLASSES
        )
    with pytest.raises(ValueError, match="'classifier' does not take weights="):
        Explainer(
            build_backbone(
                "classifier", NUM_CLASSES, classifier=model, head="head", weights="x.pt"
            ),
            NUM_CLASSES,
        )


def gated_backbone(model: nn.Module, **options: float) -> nn.Module:
    from ctc_plugin.explainer.classifier_backbone import class_map_encoder
    from ctc_plugin.explainer.gated import GatedMaskBackbone

    encoder = class_map_encoder(model, "head", NUM_CLASSES)
    return GatedMaskBackbone(encoder, NUM_CLASSES, width=2, depth=2, **options).eval()


def test_gated_masks_are_the_unet_mask_times_the_class_map_gate():
    model = classifier_with_head()
    torch.manual_seed(0)
    gated = gated_backbone(model, mask_scale=0.5)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        cam = PerPositionHead(model.head)(model.features(x))
        cam = nn.functional.interpolate(cam, size=(SIZE, SIZE), mode="bilinear")
        peak = cam.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(cam.dtype).eps)
        gate = torch.sigmoid(10.0 * (cam / peak - 0.3))
        small = nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
        unet = nn.functional.interpolate(gated.mask(small), size=(SIZE, SIZE), mode="bilinear")
        expected = torch.sigmoid(unet) * gate
        torch.testing.assert_close(gated(x).sigmoid(), expected, atol=1e-5, rtol=1e-4)
        # computing only the target's maps gives the same values
        target = torch.tensor([2, 0])
        selected = gated(x)[[0, 1], target][:, None]
        torch.testing.assert_close(gated.target_logits(x, target), selected)
        # a class whose map is negative everywhere gets an empty mask
        model.head[-1].bias.data[0] = -1e3
        assert gated_backbone(model)(x).sigmoid()[:, 0].max() < 1e-3
    with pytest.raises(ValueError, match=r"mask_scale must be a number in \(0, 1\]"):
        gated_backbone(model, mask_scale=0.0)


def test_product_logits_is_the_logit_of_the_product_without_overflow():
    from ctc_plugin.explainer.gated import product_logits

    # up to 12: beyond it logit(product) itself loses digits in 1 - product
    a = torch.linspace(-30, 12, 43, dtype=torch.float64)[:, None]
    b = torch.linspace(-30, 12, 43, dtype=torch.float64)[None, :]
    product = torch.sigmoid(a) * torch.sigmoid(b)
    torch.testing.assert_close(product_logits(a, b), torch.logit(product), rtol=1e-9, atol=1e-9)
    extreme = product_logits(torch.tensor([1e4, -1e4]), torch.tensor([1e4, 5.0]))
    assert torch.isfinite(extreme).all() and extreme[0] > 35 and extreme[1] < -35


def test_gated_explainer_saves_and_loads_and_only_it_takes_mask_scale(tmp_path):
    model = classifier_with_head()
    explainer = Explainer(
        build_backbone(
            "classifier-gated", NUM_CLASSES, classifier=model, head="head", mask_scale=0.5
        ),
        NUM_CLASSES,
    ).eval()
    path = explainer.save(tmp_path / "gated.pt")
    loaded = Explainer.load(path, classifier=classifier_with_head(seed=3))
    assert loaded.config()["mask_scale"] == 0.5
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), explainer(x))
    with pytest.raises(ValueError, match="'unet-small' does not take mask_scale="):
        Explainer(build_backbone("unet-small", NUM_CLASSES, mask_scale=0.5), NUM_CLASSES)
