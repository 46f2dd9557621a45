"""fit refuses data and settings it cannot train on, before they silently spoil the run.

A NaN image (or a classifier that outputs NaN) made every loss NaN: no epoch improved, and fit
returned the explainer with its untrained initial weights marked as trained, without an error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ctc_plugin.explainer.presets import ExplainerHyperparameters
from tests.explainer.helpers import data, tiny_classifier, tiny_explainer, tuple_loader

HP = ExplainerHyperparameters(lr=1e-2)
FAST = {"epochs": 1, "show_progress": False}


def _loader(images, labels):
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def test_nan_training_image_is_refused_naming_the_example():
    images, labels = data(8)
    images[5, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"batch 1 of epoch 1: 1 NaN .*example 1\)"):
        tiny_explainer().fit(tiny_classifier().eval(), _loader(images, labels), None, HP, **FAST)


def test_nan_validation_image_is_refused_before_training(monkeypatch):
    images, labels = data(8, seed=3)
    images[0] = float("inf")
    steps = []
    monkeypatch.setattr(
        "ctc_plugin.explainer.training._train_epoch", lambda *a, **k: steps.append(1) or {}
    )
    with pytest.raises(ValueError, match="of validation batch 0: .* NaN or inf"):
        tiny_explainer().fit(
            tiny_classifier().eval(), tuple_loader(), _loader(images, labels), HP, **FAST
        )
    assert steps == []  # refused before the first epoch


def test_integer_training_images_are_refused():
    images, labels = data(8)
    with pytest.raises(ValueError, match=r"floating-point .*x.float\(\) / 255"):
        tiny_explainer().fit(
            tiny_classifier().eval(), _loader((images * 255).byte(), labels), None, HP, **FAST
        )


class NaNClassifier(nn.Module):
    """A classifier whose logits are NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_classifier()

    def forward(self, x):
        return self.inner(x) * float("nan")


def test_nan_loss_stops_training_instead_of_returning_the_initial_weights():
    explainer = tiny_explainer()
    with pytest.raises(ValueError, match="loss of training batch 0 of epoch 1 is nan"):
        explainer.fit(NaNClassifier().eval(), tuple_loader(), None, HP, **FAST)


def test_a_run_that_diverges_leaves_the_explainer_as_it_was():
    """A huge learning rate: the first step makes the weights overflow, the next loss is NaN.

    The error names the batch, and the explainer is the one before the call: its weights, its
    record of steps, image size and classifier, its mode and its gradients; not trained.
    """
    explainer = tiny_explainer().eval()
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    with pytest.raises(ValueError, match="loss of training batch 1 of epoch 1 is nan"):
        explainer.fit(
            tiny_classifier().eval(),
            tuple_loader(),
            None,
            ExplainerHyperparameters(lr=1e30),
            **FAST,
        )
    after = explainer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not explainer.is_trained and explainer.trained_image_size is None
    assert not any(m.training for m in explainer.modules())
    assert all(p.grad is None for p in explainer.parameters())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_steps_per_epoch", 0, "max_steps_per_epoch must be an integer >= 1"),
        ("max_steps_per_epoch", 1.5, "max_steps_per_epoch must be an integer >= 1"),
        ("min_delta", float("nan"), "min_delta must be a finite number >= 0"),
        ("min_delta", -1.0, "min_delta must be a finite number >= 0"),
        ("patience", 1.5, "patience must be an integer >= 1"),
        ("epochs", 2.0, "epochs must be an integer >= 1"),
        ("seed", 1.5, "seed must be an integer or None"),
        ("multilabel", "yes", "multilabel must be True, False or None"),
        ("baseline", float("nan"), "baseline must be a finite number or a tensor"),
        ("baseline", "0.5", "baseline must be a finite number or a tensor"),
        ("baseline", torch.full((3, 1, 1), float("nan")), "baseline must be a finite number"),
        ("baseline", torch.zeros(5), r"baseline of shape \(5,\) does not broadcast"),
    ],
)
def test_unusable_loop_settings_are_refused_before_training(option, value, message):
    explainer = tiny_explainer()
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    options = {**FAST, option: value}
    with pytest.raises(ValueError, match=message):
        explainer.fit(tiny_classifier().eval(), tuple_loader(), None, HP, **options)
    assert all(torch.equal(before[k], v) for k, v in explainer.state_dict().items())


def test_a_classifier_that_is_not_a_module_is_refused():
    classifier = tiny_classifier().eval()
    with pytest.raises(TypeError, match="classifier must be an nn.Module"):
        tiny_explainer().fit(lambda x: classifier(x), tuple_loader(), None, HP, **FAST)
