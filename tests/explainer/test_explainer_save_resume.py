"""Explainer.save: atomic, plain metadata only; fit refuses a resume it cannot repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer

from .helpers import FAST, NUM_CLASSES, tiny_classifier, tiny_explainer, tuple_loader


def _state(explainer: Explainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in explainer.state_dict().items()}


def _unchanged(explainer: Explainer, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, before[key]) for key, value in explainer.state_dict().items())


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tiny_explainer().save(tmp_path / "e.pt", metadata={"note": "good"})
    with pytest.raises(TypeError, match=r"metadata\['f'\] is a builtins.function"):
        tiny_explainer().save(path, metadata={"f": lambda: 0})
    assert Explainer.load(path).metadata == {"note": "good"}
    assert [p.name for p in tmp_path.iterdir()] == ["e.pt"]  # no temporary file left


def test_numpy_metadata_is_stored_as_python_numbers_that_load(tmp_path):
    metadata = {"lr": np.float64(0.5), "sizes": [np.int64(2), np.arange(2)], "t": (1, "a")}
    loaded = Explainer.load(tiny_explainer().save(tmp_path / "e.pt", metadata=metadata))
    assert loaded.metadata == {"lr": 0.5, "sizes": [2, [0, 1]], "t": (1, "a")}
    assert type(loaded.metadata["lr"]) is float


def test_metadata_that_load_refuses_is_refused_by_save(tmp_path):
    from pathlib import Path

    with pytest.raises(TypeError, match=r"metadata\['run'\]\['out'\] is a pathlib"):
        tiny_explainer().save(tmp_path / "e.pt", metadata={"run": {"out": Path("x")}})
    with pytest.raises(TypeError, match="key 3 of type int"):
        tiny_explainer().save(tmp_path / "e.pt", metadata={3: "x"})
    assert not (tmp_path / "e.pt").exists()


def test_resume_into_another_architecture_is_a_value_error_that_changes_nothing(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    tiny_explainer().fit(tiny_classifier(), tuple_loader(), epochs=1, checkpoint=ckpt, **FAST)
    torch.manual_seed(1)
    other = Explainer(build_backbone("unet-small", NUM_CLASSES, width=8), NUM_CLASSES)
    before = _state(other)
    with pytest.raises(ValueError, match="another architecture"):
        other.fit(tiny_classifier(), tuple_loader(), epochs=2, resume=ckpt, **FAST)
    assert _unchanged(other, before)


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"baseline": 0.5}, "baseline: 0.0 there, 0.5 now"),
        ({"max_steps_per_epoch": 1}, "max_steps_per_epoch: None there, 1 now"),
        ({"patience": 7}, "patience"),
        ({"seed": 5}, "seed: 1 there, 5 now"),
        ({"train_loader": tuple_loader(n=8)}, "train_loader"),
        ({"val_loader": tuple_loader(n=4)}, "val_loader: None there"),
    ],
)
def test_resume_with_other_training_settings_is_refused(tmp_path, changed, named):
    ckpt = tmp_path / "run.ckpt"
    first = {"train_loader": tuple_loader(), "epochs": 1, "seed": 1}
    tiny_explainer().fit(tiny_classifier(), checkpoint=ckpt, **first, **FAST)
    explainer = tiny_explainer()
    before = _state(explainer)
    again = {**first, "epochs": 2, **changed}
    with pytest.raises(ValueError, match=f"other settings .*{named}"):
        explainer.fit(tiny_classifier(), resume=ckpt, **again, **FAST)
    assert _unchanged(explainer, before)


def test_a_bad_validation_loader_fails_before_training(tmp_path):
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="validation loader yielded no batches"):
        explainer.fit(tiny_classifier(), tuple_loader(), [], epochs=2, **FAST)
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"the labels of validation batch 0: .* \[0, 3\)"):
        explainer.fit(tiny_classifier(), tuple_loader(), [(images, torch.tensor([0, 9]))], **FAST)
    assert _unchanged(explainer, before) and not explainer.is_trained
