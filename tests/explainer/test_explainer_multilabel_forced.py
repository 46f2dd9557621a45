"""fit's ``multilabel`` forces the classification loss, as its docstring says.

``multilabel=True`` with class-index labels (the original's BCE on single-label data) and
``multilabel=False`` with one-hot float labels were refused instead of forced.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ctc_plugin.explainer.training as training
from ctc_plugin.explainer.presets import ExplainerHyperparameters
from tests.explainer.helpers import NUM_CLASSES, data, tiny_classifier, tiny_explainer

HP = ExplainerHyperparameters(lr=1e-2)
FAST = {"epochs": 1, "show_progress": False}


@pytest.fixture
def loss_kinds(monkeypatch):
    """Record the ``multilabel`` flag of every classification loss computed."""
    seen = []
    real = training.losses.classification_loss

    def recording(logits, targets, multilabel):
        seen.append(multilabel)
        return real(logits, targets, multilabel)

    monkeypatch.setattr(training.losses, "classification_loss", recording)
    return seen


def test_multilabel_true_uses_binary_cross_entropy_on_class_indices(loss_kinds):
    images, labels = data(8)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    tiny_explainer().fit(tiny_classifier().eval(), loader, loader, HP, multilabel=True, **FAST)
    assert loss_kinds and all(kind is True for kind in loss_kinds)


def test_multilabel_false_uses_cross_entropy_on_one_hot_labels(loss_kinds):
    images, labels = data(8)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    loader = DataLoader(TensorDataset(images, one_hot), batch_size=4)
    tiny_explainer().fit(tiny_classifier().eval(), loader, loader, HP, multilabel=False, **FAST)
    assert loss_kinds and all(kind is False for kind in loss_kinds)


def test_multilabel_false_refuses_an_image_with_two_classes():
    images, _ = data(8)
    labels = torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), NUM_CLASSES).float()
    labels[3, 1] = 1.0
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    with pytest.raises(ValueError, match="example 3 has 2 classes"):
        tiny_explainer().fit(tiny_classifier().eval(), loader, None, HP, multilabel=False, **FAST)
