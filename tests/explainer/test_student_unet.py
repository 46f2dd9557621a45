"""The one-network student: class maps and masks distilled together (``"student-unet"``)."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.classifier_backbone import class_map_encoder
from ctc_plugin.explainer.gated import product_logits
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters
from ctc_plugin.explainer.student_unet import StudentUNet, distil_student_unet

from .helpers import NUM_CLASSES, SIZE, classifier_with_head, tiny_classifier, tuple_loader

IMAGES = 64


def images(count: int = IMAGES, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def mask_teacher(seed: int = 5) -> Explainer:
    """A default explainer standing in for a trained one (its random masks are the target)."""
    torch.manual_seed(seed)
    return Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES).eval()


def test_maps_have_the_class_and_mask_resolutions_and_the_gate_combines_them():
    torch.manual_seed(0)
    network = StudentUNet(NUM_CLASSES, width=4).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        cam, mask = network.maps(x)
        assert cam.shape == (2, NUM_CLASSES, 2, 3) and mask.shape == (2, NUM_CLASSES, 8, 12)
        gated = network(x)
        assert gated.shape == mask.shape
        # the gate by hand: class maps resized to the masks, divided by their maximum
        up = torch.nn.functional.interpolate(cam, size=(8, 12), mode="bilinear")
        peak = up.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(up.dtype).eps)
        expected = product_logits(mask, network.sharpness * (up / peak - network.threshold))
        torch.testing.assert_close(gated, expected)
        target = torch.tensor([2, 0])
        torch.testing.assert_close(network.target_logits(x, target), gated[[0, 1], target][:, None])
    with pytest.raises(ValueError, match="width must be >= 1"):
        StudentUNet(NUM_CLASSES, width=0)


def test_explainer_with_the_student_unet_saves_loads_and_selects_targets(tmp_path):
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES).eval()
    assert explainer.config()["backbone"] == "student-unet" and explainer.config()["width"] == 4
    assert explainer.input_memory_format == torch.channels_last
    loaded = Explainer.load(explainer.save(tmp_path / "student-unet.pt"))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = explainer(x)
        assert logits.shape == (2, NUM_CLASSES, SIZE, SIZE)
        torch.testing.assert_close(loaded(x), logits)
        target = torch.tensor([1, 2])
        selected = logits[[0, 1], target][:, None]
        torch.testing.assert_close(explainer.target_logits(x, target), selected)
        odd = torch.rand(1, 3, 37, 53)  # sizes the strides do not divide: still the input's
        assert explainer(odd).shape == (1, NUM_CLASSES, 37, 53)
    with pytest.raises(
        ValueError, match="'student-unet' does not take depth=; it takes in_channels=, width="
    ):
        Explainer(build_backbone("student-unet", NUM_CLASSES, depth=4), NUM_CLASSES)
    with pytest.raises(ValueError, match="'student-unet' does not take student_width="):
        Explainer(build_backbone("student-unet", NUM_CLASSES, student_width=4), NUM_CLASSES)


def distilled(seed: int, epochs: int = 2) -> tuple[StudentUNet, list[float]]:
    torch.manual_seed(0)
    network = StudentUNet(NUM_CLASSES, width=4)
    history = distil_student_unet(
        network, classifier_with_head(), "head", mask_teacher(), images(),
        epochs=epochs, batch_size=16, lr=1e-2, seed=seed,
    )  # fmt: skip
    return network, history


def test_distillation_learns_both_teachers_and_leaves_them_alone():
    model, teacher_masks = classifier_with_head(), mask_teacher()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, teacher_masks)]
    torch.manual_seed(0)
    network = StudentUNet(NUM_CLASSES, width=8)
    test = images(16, seed=2)
    with torch.no_grad():
        maps = class_map_encoder(model, "head", NUM_CLASSES).eval()(test)
        masks = torch.nn.functional.adaptive_avg_pool2d(teacher_masks(test).sigmoid(), (4, 4))

    def errors() -> tuple[float, float]:
        with torch.no_grad():
            cam, mask = network.eval().maps(test)
        return (
            ((cam - maps).pow(2).mean() / maps.var()).item(),
            (mask.sigmoid() - masks).abs().mean().item(),
        )

    start = errors()
    model.train(), teacher_masks.train()  # both keep the modes they came in
    history = distil_student_unet(
        network, model, "head", teacher_masks, images(), epochs=30, batch_size=16, lr=1e-2
    )
    cam_error, mask_error = errors()
    assert len(history) == 30 and history[-1] < 0.5 * history[0]
    assert not network.training
    # measured: class maps 0.066 against 1.01 before (the mean map scores 1.0), masks 0.031
    # against 0.083
    assert cam_error < 0.2 < start[0] and mask_error < 0.5 * start[1]
    for module, state in zip((model, teacher_masks), before, strict=True):
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, state[key])
        assert all(p.grad is None for p in module.parameters()) and module.training
        assert all(p.requires_grad for p in module.parameters())


def test_distillation_is_deterministic_with_a_seed():
    (first, _), (again, _), (other, _) = distilled(0), distilled(0), distilled(1)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(first.head.weight, other.head.weight)  # the seed orders batches


def test_distillation_errors_name_the_problem():
    model, teacher = classifier_with_head(), mask_teacher()
    few = images(8)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        distil_student_unet(StudentUNet(NUM_CLASSES), model, "head", teacher, few, epochs=0)
    with pytest.raises(ValueError, match="at least one batch"):
        distil_student_unet(StudentUNet(NUM_CLASSES), model, "head", teacher, few, batch_size=16)
    with pytest.raises(ValueError, match="the explainer has 5"):
        distil_student_unet(StudentUNet(5), model, "head", teacher, few, batch_size=4)
    other = Explainer(build_backbone("unet-small", NUM_CLASSES + 1, width=2), NUM_CLASSES + 1)
    with pytest.raises(ValueError, match="the mask explainer returned"):
        distil_student_unet(StudentUNet(NUM_CLASSES), model, "head", other, few, batch_size=4)


def test_the_published_objective_fine_tunes_every_part_of_a_student_unet_explainer():
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("student-unet", NUM_CLASSES, width=2), NUM_CLASSES)
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    explainer.fit(
        tiny_classifier(),
        tuple_loader(),
        config=ExplainerHyperparameters(lr=1e-2),
        epochs=1,
        show_progress=False,
    )
    assert explainer.is_trained and explainer.trained_image_size == (SIZE, SIZE)
    for name, parameter in explainer.named_parameters():  # encoder, both heads, gate scalars
        assert not torch.equal(parameter, before[name]), name


def test_distilling_an_explainer_marks_it_trained(tmp_path):
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES)
    assert not explainer.is_trained
    distil_student_unet(
        explainer, classifier_with_head(), "head", mask_teacher(), images(),
        epochs=2, batch_size=16, lr=1e-2,
    )  # fmt: skip
    steps = 2 * (len(images()) // 16)
    assert int(explainer.trained_steps) == steps and explainer.trained_image_size == (SIZE, SIZE)
    assert not explainer.training
    loaded = Explainer.load(explainer.save(tmp_path / "distilled.pt"))
    assert loaded.is_trained and loaded.trained_image_size == (SIZE, SIZE)
