"""A resume against another classifier than the checkpoint's is refused; older checkpoints resume.

Before, the checkpoint did not identify the classifier: ``--model vgg --resume`` of a resnet
checkpoint continued resnet's explainer and wrote it labelled vgg.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.explainer.checkpoints import load_checkpoint

from .helpers import FAST, tiny_classifier, tiny_explainer, tuple_loader


def _state(explainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in explainer.state_dict().items()}


def _unchanged(explainer, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, before[key]) for key, value in explainer.state_dict().items())


def _checkpoint(tmp_path, classifier):
    ckpt = tmp_path / "run.ckpt"
    first = {"train_loader": tuple_loader(), "epochs": 1, "seed": 1, "checkpoint": ckpt}
    tiny_explainer().fit(classifier, **first, **FAST)
    return ckpt


def test_resume_against_a_classifier_with_other_weights_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="trained against another classifier") as error:
        explainer.fit(
            tiny_classifier(seed=1), tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST
        )
    assert "parameters and buffers differ" in str(error.value)
    assert "train afresh without resume" in str(error.value)
    assert _unchanged(explainer, before)


def test_a_classifier_that_differs_in_a_buffer_only_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    other = tiny_classifier(seed=0)
    with torch.no_grad():
        other[1].running_mean.add_(0.25)  # BatchNorm statistics: not a parameter
    with pytest.raises(ValueError, match="trained against another classifier"):
        tiny_explainer().fit(other, tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST)


def test_resume_against_the_same_classifier_continues(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    result = tiny_explainer().fit(
        tiny_classifier(seed=0), tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST
    )
    assert len(result.history) == 2


def test_a_checkpoint_without_a_classifier_digest_still_resumes(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    state = load_checkpoint(ckpt)
    state.pop("classifier_digest", None)  # as written before the digest was recorded
    torch.save(state, ckpt)
    result = tiny_explainer().fit(
        tiny_classifier(seed=1), tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST
    )
    assert len(result.history) == 2
