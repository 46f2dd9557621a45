"""The classifier digest of ``fit_explainer`` checkpoints: wrappers, dtypes and when it is paid.

Before, a classifier wrapped in ``nn.DataParallel`` or ``torch.compile`` (the same weights under
``module.`` / ``_orig_mod.`` keys) was refused on resume as one whose "parameters and buffers
differ", and a classifier cast to another dtype got the same false message. The digest is
computed once per ``fit`` (it is recorded on the explainer too), not once per epoch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import module_state
from ctc_plugin.explainer import training

from .helpers import FAST, tiny_classifier, tiny_explainer, tuple_loader


def _checkpoint(tmp_path, classifier):
    ckpt = tmp_path / "run.ckpt"
    first = {"train_loader": tuple_loader(), "epochs": 1, "seed": 1, "checkpoint": ckpt}
    tiny_explainer().fit(classifier, **first, **FAST)
    return ckpt


def test_resume_against_the_same_classifier_in_data_parallel_continues(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    wrapped = nn.DataParallel(tiny_classifier(seed=0))  # on the CPU: calls the module itself
    result = tiny_explainer().fit(wrapped, tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST)
    assert len(result.history) == 2


def test_wrappers_do_not_change_the_digest():
    model = tiny_classifier(seed=0)
    digest = module_state.state_digest(model)
    assert module_state.state_digest(nn.DataParallel(model)) == digest
    assert module_state.state_digest(torch.compile(model)) == digest  # not called: no compile
    assert module_state.state_digest(torch.compile(nn.DataParallel(model))) == digest


def test_a_classifier_in_another_dtype_is_refused_naming_the_dtype(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    with pytest.raises(ValueError, match="in another dtype") as error:
        tiny_explainer().fit(
            tiny_classifier(seed=0).double(), tuple_loader(), epochs=2, resume=ckpt, **FAST
        )
    message = str(error.value)
    assert "same values" in message and "float32 there, float64 now" in message
    assert "parameters and buffers differ" not in message


def test_other_weights_in_another_dtype_name_both(tmp_path):
    ckpt = _checkpoint(tmp_path, tiny_classifier(seed=0))
    with pytest.raises(ValueError, match="parameters and buffers differ") as error:
        tiny_explainer().fit(
            tiny_classifier(seed=1).double(), tuple_loader(), epochs=2, resume=ckpt, **FAST
        )
    assert "float32 there, float64 now" in str(error.value)


def test_the_digest_is_computed_once_per_fit(tmp_path, monkeypatch):
    calls = []

    def counted(classifier):
        calls.append(classifier)
        return module_state.state_digest(classifier)

    monkeypatch.setattr(training, "state_digest", counted)
    classifier = tiny_classifier(seed=0)
    ckpt = tmp_path / "run.ckpt"
    result = tiny_explainer().fit(classifier, tuple_loader(), epochs=3, checkpoint=ckpt, **FAST)
    assert len(result.history) == 3
    assert calls == [classifier]
