"""SigLIP 2 takes images as sequences of patches; ``HuggingFaceClassifier`` cuts them so.

The cut is checked against SigLIP 2's own image processor function (numpy, one image at a time)
and the wrapped model's logits against the model called as its processor's output calls it
(``pixel_attention_mask`` of ones, one ``spatial_shapes`` row per image).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ctc_plugin import CTC, CTCAttributor, CTCComposite, IntegrativeCAM
from ctc_plugin.adapters.huggingface import HuggingFaceClassifier, patch_sequence
from ctc_plugin.model_families import huggingface_classifier

if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs transformers", allow_module_level=True)


@pytest.fixture(scope="module")
def siglip2_processing():
    """SigLIP 2's image processing module, imported when a test runs (not when collected: the
    import takes seconds, in every test worker)."""
    return pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")


@pytest.mark.parametrize("size", [(32, 32), (16, 48)])
def test_images_are_cut_as_siglip2s_processor_cuts_them(
    size: tuple[int, int], siglip2_processing
) -> None:
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)).double()
    cut = patch_sequence(images, 8)
    for image, patches in zip(images, cut["pixel_values"], strict=True):
        by_processor = siglip2_processing.convert_image_to_patches(
            image.permute(1, 2, 0).numpy(), 8
        )  # (H, W, C) in, as the processor holds images
        np.testing.assert_array_equal(patches.numpy(), by_processor)
    assert cut["spatial_shapes"].tolist() == [[size[0] // 8, size[1] // 8]]


def test_the_wrapped_siglip2_gives_the_logits_of_its_processors_inputs(siglip2_processing) -> None:
    model = huggingface_classifier("SigLIP 2")
    assert model.patch_size == 8
    images = torch.rand(3, 3, 16, 40, generator=torch.Generator().manual_seed(1)).double()
    patches = torch.stack(
        [
            torch.from_numpy(
                siglip2_processing.convert_image_to_patches(image.permute(1, 2, 0).numpy(), 8)
            )
            for image in images
        ]
    )
    with torch.no_grad():
        expected = model.model(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
            spatial_shapes=torch.tensor([[2, 5]] * 3),
        ).logits
        torch.testing.assert_close(model(images), expected, rtol=1e-12, atol=1e-12)


def test_images_that_do_not_divide_into_patches_are_refused() -> None:
    model = huggingface_classifier("SigLIP 2")
    with pytest.raises(ValueError, match=r"20 x 32 pixels do not divide into the model's 8 x 8"):
        model(torch.rand(1, 3, 20, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\)"):
        patch_sequence(torch.rand(3, 16, 16), 8)


def test_other_models_get_their_pixel_values_as_they_are() -> None:
    model = huggingface_classifier("SigLIP")
    assert isinstance(model, HuggingFaceClassifier) and model.patch_size is None
    images = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    assert model.model_inputs(images)["pixel_values"] is images


@pytest.mark.parametrize("method", ["CTC", "IntegrativeCAM", "CTCAttributor"])
def test_a_bare_siglip2_is_refused_with_the_wrapper_named(method: str) -> None:
    """Given (N, C, H, W) images it would fail inside its patch embedding (a torch error)."""
    model = huggingface_classifier("SigLIP 2").model  # Siglip2ForImageClassification
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    mask = (torch.arange(32) // 16).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    wrapper = r"takes its images cut into a sequence of patches.*HuggingFaceClassifier\(model\)"
    with pytest.raises(ValueError, match=wrapper):
        if method == "CTC":
            CTC(model).attribute(x, target=0, feature_mask=mask)
        elif method == "IntegrativeCAM":
            IntegrativeCAM(model.forward).attribute(x, target=0)  # a bound method too
        else:
            with CTCAttributor(model, CTCComposite(), feature_mask=mask) as attributor:
                attributor(x, torch.eye(2, dtype=x.dtype)[[0]])


def test_the_inputs_the_wrapper_passes_itself_are_refused_as_options() -> None:
    model = huggingface_classifier("SigLIP 2").model
    with pytest.raises(TypeError, match=r"drop \['spatial_shapes'\]"):
        HuggingFaceClassifier(model, spatial_shapes=torch.tensor([[4, 4]]))
    with pytest.raises(TypeError, match="drop return_dict=False"):
        HuggingFaceClassifier(model, return_dict=False)
    assert HuggingFaceClassifier(model, return_dict=None).inputs == {"return_dict": None}
