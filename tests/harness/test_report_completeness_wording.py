"""The report's completeness line for one image and for no robustness images.

It said "on all 1 images (robustness metrics on the first 0)".
"""

import pytest

from ctc_plugin.harness import report
from ctc_plugin.harness.report import Coverage


@pytest.mark.parametrize(
    ("images", "robust", "words"),
    [
        (24, 8, "on all 24 images (robustness metrics on the first 8)."),
        (24, 0, "on all 24 images (robustness metrics on none)."),
        (1, 1, "on the 1 image (robustness metrics on it)."),
        (1, 0, "on the 1 image (robustness metrics on none)."),
    ],
)
def test_the_images_covered_read_right(images, robust, words):
    settings = {"images": images, "robustness_images": robust}
    done = report._completeness([Coverage("resnet", "shapes", 2, 2)], settings)
    assert done[2] == f"Complete: 1 model, every planned method variant {words}"
    partial = report._completeness([Coverage("resnet", "shapes", 1, 2)], settings)
    assert f"Every finished variant covers {words[3:]}" in partial[2]
