"""Loading an Explainer that holds a classifier copy with another classifier says what to pass."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import Explainer, zoo
from ctc_plugin.files import read_data_file
from ctc_plugin.zoo.explainers import explainer_path


@pytest.mark.parametrize(("family", "split"), [("densenet", "shapes"), ("resnet", "composite")])
def test_a_classifier_of_another_architecture_or_class_count_is_named_with_the_fix(family, split):
    path = explainer_path("resnet", "shapes", kind="class-specific")
    with pytest.raises(ValueError) as caught:
        Explainer.load(path, classifier=zoo.load(family, split))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "does not match: pass a model of that architecture and class count (resnet, " in message
    assert "ctc_plugin.zoo.build('resnet', 6)" in message


def test_files_without_a_classifier_copy_ignore_the_classifier():
    explainer = Explainer.load(explainer_path("resnet"), classifier=zoo.load("densenet"))
    assert explainer.num_classes == 6 and explainer.is_trained


def test_a_damaged_file_loaded_with_its_own_classifier_does_not_blame_the_classifier(tmp_path):
    """A mismatch outside the backbone (a damaged ``image_size``) is no classifier's fault."""
    path = explainer_path("resnet", "shapes", kind="class-specific")
    payload = read_data_file(path, "explainer file")
    payload["state_dict"]["image_size"] = payload["state_dict"]["image_size"][:1]
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    with pytest.raises(ValueError, match="image_size") as caught:
        Explainer.load(damaged, classifier=zoo.load("resnet", "shapes"))
    assert "does not match" not in str(caught.value)
