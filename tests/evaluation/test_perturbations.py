import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from ctc_plugin.evaluation.perturbations import (
    SEVERITIES,
    gaussian_blur,
    gaussian_noise,
    perturb,
    uniform_noise,
)


def test_uniform_noise_does_not_wrap_around():
    dark = torch.zeros(1, 3, 8, 8)
    bright = torch.ones(1, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert uniform_noise(dark, 0.3, g).max() <= 0.3  # uint8 wrap-around would give ~1
    assert uniform_noise(bright, 0.3, g).min() >= 0.7
    assert uniform_noise(dark, 0.3, g).min() == 0.0


@settings(max_examples=15, deadline=None)
@given(std=st.floats(0.0, 0.5), seed=st.integers(0, 1000))
def test_noise_stays_in_range_and_is_float(std, seed):
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    for out in (
        gaussian_noise(images, std, torch.Generator().manual_seed(seed)),
        uniform_noise(images, std, torch.Generator().manual_seed(seed)),
    ):
        assert out.dtype == images.dtype and out.shape == images.shape
        assert out.min() >= 0 and out.max() <= 1
        assert (out - images).abs().max() <= max(std * 10, 1e-7)  # no gross errors


def test_gaussian_noise_has_requested_std():
    images = torch.full((4, 3, 64, 64), 0.5)
    out = gaussian_noise(images, 0.05, torch.Generator().manual_seed(0))
    assert (out - images).std().item() == pytest.approx(0.05, rel=0.02)


@pytest.mark.parametrize("sigma", [0.8, 1.1, 2.5])
def test_blur_matches_scipy(sigma):
    image = torch.rand(
        1, 1, 24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    ours = gaussian_blur(image, sigma)[0, 0].numpy()
    radius = math.ceil(3 * sigma)
    theirs = ndimage.gaussian_filter(
        image[0, 0].numpy(), sigma, mode="mirror", truncate=radius / sigma
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(("side", "sigma"), [(4, 2.5), (8, 6.0), (1, 1.0)])
def test_blur_of_images_smaller_than_its_kernel_cuts_the_kernel_to_them(side, sigma):
    """Reflection reaches one side less a pixel: the kernel's radius is cut to it."""
    image = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(4)).double()
    ours = gaussian_blur(image, sigma)[0, 0].numpy()
    radius = min(math.ceil(3 * sigma), side - 1)
    theirs = ndimage.gaussian_filter(
        image[0, 0].numpy(), sigma, mode="mirror", truncate=radius / sigma
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert perturb(image.float(), "blur", "big").shape == image.shape


def test_perturb_levels_and_errors():
    images = torch.rand(1, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    small = perturb(images, "uniform", "small", torch.Generator().manual_seed(0))
    explicit = uniform_noise(images, SEVERITIES["uniform"]["small"], g)
    assert torch.equal(small, explicit)
    with pytest.raises(ValueError, match="kind must be"):
        perturb(images, "salt", "small")
    with pytest.raises(ValueError, match="severity"):
        perturb(images, "blur", "huge")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        perturb(images * 255, "blur", "small")
    with pytest.raises(ValueError, match="floating-point"):
        perturb((images * 255).to(torch.uint8), "blur", "small")
