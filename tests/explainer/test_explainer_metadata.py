"""An Explainer's ``metadata`` goes with its weights: ``save`` writes it, ``fit`` renews it.

``save`` wrote only the ``metadata=`` argument, so re-saving a loaded explainer (after moving it
to another device or precision) dropped the command and hyper-parameters its file recorded; and
``hyperparameters()`` was ``None`` after ``fit``.
"""

from __future__ import annotations

import torch

from ctc_plugin import Explainer
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.presets import ExplainerHyperparameters
from ctc_plugin.explainer.student_unet import distil_student_unet
from tests.explainer.helpers import (
    FAST,
    NUM_CLASSES,
    classifier_with_head,
    tiny_classifier,
    tiny_explainer,
    tuple_loader,
)


def test_a_loaded_explainer_saved_again_keeps_what_its_file_recorded(tmp_path):
    explainer = tiny_explainer()
    explainer.fit(tiny_classifier().eval(), tuple_loader(), epochs=1, **FAST)
    explainer.save(tmp_path / "a.pt", {"command": "train it", "seed": 3})
    loaded = Explainer.load(tmp_path / "a.pt")
    assert loaded.metadata["command"] == "train it"
    loaded.double().save(tmp_path / "b.pt", {"seed": 4})  # a key given replaces the file's
    again = Explainer.load(tmp_path / "b.pt")
    assert again.metadata == {**loaded.metadata, "seed": 4}
    assert again.metadata["command"] == "train it"
    assert again.hyperparameters() == FAST["config"]


def test_fit_records_its_hyper_parameters_in_place_of_an_earlier_training(tmp_path):
    explainer = tiny_explainer()
    assert explainer.hyperparameters() is None
    explainer.metadata = {"command": "an earlier training", "hyperparameters": {"lr": 0.5}}
    config = ExplainerHyperparameters(lr=2e-2, tv_weight=0.5)
    explainer.fit(tiny_classifier().eval(), tuple_loader(), epochs=1, config=config,
                  show_progress=False)  # fmt: skip
    assert explainer.hyperparameters() == config
    assert "command" not in explainer.metadata  # it no longer describes the weights
    explainer.save(tmp_path / "e.pt")
    assert Explainer.load(tmp_path / "e.pt").hyperparameters() == config


def test_a_distillation_empties_what_an_earlier_training_recorded():
    torch.manual_seed(0)
    network = Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES)
    network.metadata = {"command": "an earlier training", "hyperparameters": {"lr": 0.5}}
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    distil_student_unet(network, classifier_with_head(), "head", tiny_explainer(), images,
                        epochs=1, batch_size=8)  # fmt: skip
    assert network.metadata == {}
    assert network.hyperparameters() is None
