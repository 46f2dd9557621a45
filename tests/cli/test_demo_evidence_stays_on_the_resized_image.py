"""``demo``'s ground-truth evidence is resized onto the pixels the image's resize puts there.

The image is resized as torchvision resizes (pixel centres aligned); the evidence was resized
with ``nearest``, which takes the source pixel at each output pixel's top-left corner: the contour
and the "in evidence" shares sat about half an output pixel down and to the right of the object
for any resize of the sample (``demo --resize 200``, a torchvision model's 232). Measured on
discs, whose exact mask at the new size is known.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ctc_plugin.commands.explain import _evidence
from ctc_plugin.datasets.geometry import shape_mask
from ctc_plugin.images import ImagePreprocessing


@pytest.mark.parametrize("resize", [40, 150, 232])
def test_the_evidence_is_not_shifted_against_the_image(tmp_path, resize):
    rng = np.random.default_rng(0)
    scale = resize / 96
    offsets = []
    for i in range(12):
        cy, cx = rng.uniform(30, 66, size=2)
        radius = rng.uniform(8, 20)
        path = tmp_path / f"evidence{i}.png"
        mask = shape_mask("circle", (96, 96), cy, cx, radius)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        # the disc where the resized image shows it: pixel centres map as (i + 0.5) * s - 0.5
        exact = shape_mask(
            "circle",
            (resize, resize),
            (cy + 0.5) * scale - 0.5,
            (cx + 0.5) * scale - 0.5,
            radius * scale,
        )
        resized = _evidence(path, ImagePreprocessing(resize=resize)).numpy()
        assert resized.shape == exact.shape
        offsets.append(np.subtract(ndimage.center_of_mass(resized), ndimage.center_of_mass(exact)))
    shift = np.abs(np.mean(offsets, axis=0))
    assert shift.max() < 0.2, f"the evidence sits {shift} output pixels off the image's object"
