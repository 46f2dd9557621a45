"""The benchmark's Explainer method warns of a wrong classifier, except for the modified copies.

The input-invariance and sanity checks give a trained Explainer copies of its classifier with
other weights on purpose (a shifted first layer, randomised layers); the benchmark silences the
`ClassifierMismatchWarning` there only, so a user who pairs ``explainer_method`` with another
model still hears of it.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ctc_plugin.explainer.attribution import ClassifierMismatchWarning
from ctc_plugin.harness import benchmark, scoring
from ctc_plugin.harness.methods import explainer_method
from tests.explainer.helpers import data, tiny_classifier, tiny_explainer, tuple_loader


@pytest.fixture(scope="module")
def trained():
    classifier = tiny_classifier(seed=0).eval()
    explainer = tiny_explainer()
    explainer.fit(classifier, tuple_loader(), epochs=1, show_progress=False)
    return classifier, explainer


def test_the_sanity_column_explains_randomised_copies_without_the_warning(trained):
    classifier, explainer = trained
    images, labels = data(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        rho = scoring.sanity_rho(
            explainer_method(explainer), classifier, images, labels, None,
            benchmark.BenchmarkConfig(),
        )  # fmt: skip
    assert isinstance(rho, float)


def test_the_method_given_another_classifier_warns(trained):
    _, explainer = trained
    images, labels = data(2)
    with pytest.warns(ClassifierMismatchWarning):
        explainer_method(explainer)(tiny_classifier(seed=1).eval(), images, labels, None)
    assert torch.is_tensor(explainer_method(explainer)(trained[0], images, labels, None))
