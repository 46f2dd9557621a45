"""A user's audit of the Explainer: awkward but plausible inputs get results or clear refusals.

Each test was written against a defect found by training and using an explainer as a Captum user
would: internal errors instead of refusals, a confusing error after the explainer had already
trained, masks of an arbitrary class, and a classifier switched under another thread's call.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ctc_plugin import ExplainerAttribution
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.inputs import TrainingModeError

from .helpers import (
    FAST,
    NUM_CLASSES,
    SIZE,
    classifier_with_head,
    data,
    tiny_classifier,
    tiny_explainer,
    tuple_loader,
)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def _unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, before[key]) for key, value in module.state_dict().items())


def _trained(explainer: Explainer) -> Explainer:
    """Mark ``explainer`` trained on SIZE x SIZE images (its weights do not matter here)."""
    explainer.trained_steps.fill_(1)
    explainer.image_size.copy_(torch.tensor([SIZE, SIZE]))
    return explainer.eval()


def _loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


# ------------------------------------------------------------------------- float64 training
def test_fit_trains_against_a_float64_classifier_and_leaves_it_as_it_was():
    """Attribution took a float64 classifier; fit failed inside it (float masked images)."""
    classifier = tiny_classifier().eval().double()
    before = _state(classifier)
    explainer = tiny_explainer()
    result = explainer.fit(classifier, tuple_loader(), epochs=1, **FAST)
    assert result.steps > 0 and explainer.is_trained
    assert next(explainer.parameters()).dtype == torch.float32
    assert _unchanged(classifier, before)
    assert all(p.dtype == torch.float64 and p.grad is None for p in classifier.parameters())


def test_a_float64_explainer_trains_on_float32_images():
    """The images were cast to float32 whatever the explainer's dtype: a dtype error inside."""
    explainer = tiny_explainer().double()
    explainer.fit(tiny_classifier().eval(), tuple_loader(), epochs=1, **FAST)
    assert explainer.is_trained
    assert all(p.dtype == torch.float64 for p in explainer.parameters())


def test_a_float64_baseline_tensor_is_taken_as_the_classifier_takes_images():
    """A baseline made with NumPy (float64) promoted the masked images to float64."""
    baseline = torch.full((3, 1, 1), 0.5, dtype=torch.float64)
    result = tiny_explainer().fit(
        tiny_classifier().eval(), tuple_loader(), epochs=1, baseline=baseline, **FAST
    )
    assert result.steps > 0


# ------------------------------------------------------------------ what the classifier returns
class _TupleOutput(nn.Module):
    """A classifier returning ``(logits, features)``, as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_classifier().eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), x.mean(dim=(2, 3))


class _DictOutput(_TupleOutput):
    """A classifier returning ``{"logits": ...}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": self.model(x)}


@pytest.mark.parametrize("make", [_TupleOutput, _DictOutput], ids=["tuple", "dict"])
@pytest.mark.parametrize("target", [None, 1], ids=["predicted", "given"])
def test_attribution_refuses_a_classifier_whose_output_is_no_tensor(make, target):
    """It was an AttributeError ('tuple' object has no attribute 'dim')."""
    attribution = ExplainerAttribution(make().eval(), _trained(tiny_explainer()))
    with pytest.raises(ValueError, match="not a tensor of scores"):
        attribution.attribute(data(2)[0], target=target)


@pytest.mark.parametrize("make", [_TupleOutput, _DictOutput], ids=["tuple", "dict"])
def test_fit_refuses_a_classifier_whose_output_is_no_tensor(make):
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="not a tensor of class scores") as error:
        explainer.fit(make().eval(), tuple_loader(), epochs=1, **FAST)
    assert "nn.Module" in str(error.value)  # fit takes modules: the advice is a wrapper module
    assert _unchanged(explainer, before)


class _NaNScores(nn.Module):
    """A classifier whose scores for the second example are NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_classifier().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.model(x).clone()
        scores[1:2] = float("nan")
        return scores


def test_the_predicted_class_of_nan_scores_is_refused():
    """target=None explained argmax(NaN): the masks of an arbitrary class, silently."""
    attribution = ExplainerAttribution(_NaNScores().eval(), _trained(tiny_explainer()))
    with pytest.raises(ValueError, match=r"NaN or infinite for example 1:") as error:
        attribution.attribute(data(3)[0])
    assert "target=" in str(error.value)
    assert attribution.attribute(data(3)[0], target=0).shape == (3, 3, SIZE, SIZE)


# ----------------------------------------------------------------------------- image sizes
def test_images_too_small_for_the_unet_at_its_input_scale_are_refused_clearly():
    """An 8 x 11 image at input_scale 0.25 reached max_pool2d's 'Output size is too small'."""
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES,
                          input_scale=0.25)  # fmt: skip
    images, labels = torch.rand(4, 3, 8, 11), torch.randint(0, NUM_CLASSES, (4,))
    with pytest.raises(ValueError, match="at least 4x4") as error:
        explainer.fit(tiny_classifier().eval(), _loader(images, labels), epochs=1, **FAST)
    assert "2x2" in str(error.value) and "input_scale" in str(error.value)
    assert not explainer.is_trained


def test_an_explainer_trained_on_several_image_sizes_explains_each_of_them():
    """Only the last batch's size was recorded, so the sizes it was trained on were refused."""
    classifier = tiny_classifier().eval()
    batches = [
        (torch.rand(2, 3, 16, 16), torch.tensor([0, 1])),
        (torch.rand(2, 3, 24, 20), torch.tensor([2, 1])),
    ]
    explainer = tiny_explainer()
    explainer.fit(classifier, batches, epochs=1, **FAST)
    attribution = ExplainerAttribution(classifier, explainer)
    for images, labels in batches:
        assert attribution.attribute(images, target=labels).shape == images.shape
    assert explainer.trained_image_size is None  # several sizes: no single size to check


def test_an_explainer_trained_on_one_size_still_refuses_another():
    classifier = tiny_classifier().eval()
    explainer = tiny_explainer()
    explainer.fit(classifier, tuple_loader(), epochs=1, **FAST)
    assert explainer.trained_image_size == (SIZE, SIZE)
    with pytest.raises(ValueError, match="trained on 16x16"):
        ExplainerAttribution(classifier, explainer).attribute(torch.rand(1, 3, 24, 24), target=0)


# ------------------------------------------------------------------------------- loaders
def test_a_one_shot_training_iterator_is_refused_before_a_second_epoch_needs_it():
    """A generator trained epoch 1, then failed with 'the training loader yielded no batches'."""
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="one-shot iterator") as error:
        explainer.fit(tiny_classifier().eval(), (b for b in tuple_loader()), epochs=2, **FAST)
    assert "list" in str(error.value)
    assert _unchanged(explainer, before)


def test_a_one_shot_training_iterator_trains_one_epoch():
    result = tiny_explainer().fit(tiny_classifier().eval(), iter(tuple_loader()), epochs=1, **FAST)
    assert len(result.history) == 1


def test_a_one_shot_validation_iterator_is_refused_before_training():
    """The label check used the generator up; epoch 1 then found it empty, after training."""
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="val_loader is a one-shot iterator"):
        explainer.fit(
            tiny_classifier().eval(), tuple_loader(), (b for b in tuple_loader()), epochs=1,
            **FAST,
        )  # fmt: skip
    assert _unchanged(explainer, before)


# ------------------------------------------------------------------------------- files
def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tmp_path):
    """It trained the first epoch, then failed with an IsADirectoryError from the rename."""
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(ValueError, match="is a folder") as error:
        explainer.fit(tiny_classifier().eval(), tuple_loader(), epochs=1, checkpoint=tmp_path,
                      **FAST)  # fmt: skip
    assert "explainer.ckpt" in str(error.value)
    assert _unchanged(explainer, before)


def test_an_explainer_file_given_as_a_checkpoint_says_which_file_to_give(tmp_path):
    """It only said "is not an explainer training checkpoint"."""
    path = _trained(tiny_explainer()).save(tmp_path / "e.pt")
    with pytest.raises(ValueError, match="written by Explainer.save") as error:
        load_checkpoint(path)
    assert "checkpoint=" in str(error.value) and "Explainer.load" in str(error.value)


def test_a_checkpoint_given_as_an_explainer_file_says_which_file_to_give(tmp_path):
    """It only said it was not an explainer file written by Explainer.save."""
    ckpt = tmp_path / "run.ckpt"
    tiny_explainer().fit(tiny_classifier().eval(), tuple_loader(), epochs=1, checkpoint=ckpt,
                         **FAST)  # fmt: skip
    with pytest.raises(ValueError, match="training checkpoint") as error:
        Explainer.load(ckpt)
    assert "resume=" in str(error.value) and "Explainer.save" in str(error.value)


def test_a_class_specific_file_of_a_model_outside_the_zoo_is_not_told_to_build_it_there(
    tmp_path,
):
    """The hint said "e.g. ctc_plugin.zoo.build('mine', 3)" for the user's own model 'mine'."""
    classifier = classifier_with_head()
    explainer = Explainer(
        build_backbone("classifier", NUM_CLASSES, classifier=classifier, head="head", width=2),
        NUM_CLASSES,
    )
    path = explainer.save(tmp_path / "e.pt", metadata={"model": "mine"})
    with pytest.raises(ValueError, match="does not match") as error:
        Explainer.load(path, classifier=tiny_classifier())
    assert "zoo.build('mine'" not in str(error.value)
    assert "(mine)" in str(error.value)


# ------------------------------------------------------------------------------- threads
class _Pausing(nn.Module):
    """A classifier with BatchNorm whose first forward pass waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_classifier()
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(timeout=30)
        return self.model(x)


def test_fit_holds_the_classifier_so_another_thread_never_sees_it_switched():
    """fit switched a training-mode classifier to eval mode without holding its lock: another
    thread's ExplainerAttribution then ran it as if the user had called eval() (and, had fit
    restored training mode mid-call, would have updated its BatchNorm statistics)."""
    classifier = _Pausing().train()  # BatchNorm in training mode: attribution must refuse it
    attribution = ExplainerAttribution(classifier, _trained(tiny_explainer()))
    outcome: list[object] = []

    def explain() -> None:
        try:
            outcome.append(attribution.attribute(data(2)[0], target=0))
        except TrainingModeError as error:
            outcome.append(error)

    fitting = threading.Thread(
        target=lambda: tiny_explainer().fit(classifier, tuple_loader(), epochs=1, **FAST)
    )
    fitting.start()
    assert classifier.entered.wait(timeout=30)  # fit has switched the classifier to eval mode
    explaining = threading.Thread(target=explain)
    explaining.start()
    explaining.join(timeout=1.0)  # without the lock it finishes now, on the switched model
    classifier.release.set()
    fitting.join()
    explaining.join()
    assert classifier.training
    assert len(outcome) == 1 and isinstance(outcome[0], TrainingModeError)


@pytest.mark.parametrize("entry", ["best_state", "optimizer"])
def test_an_incomplete_checkpoint_is_refused_naming_what_it_lacks(tmp_path, entry):
    """Without best_state it was called "another architecture"; without the optimiser state a
    KeyError came after the explainer had already taken the checkpoint's weights."""
    ckpt = tmp_path / "run.ckpt"
    tiny_explainer().fit(tiny_classifier().eval(), tuple_loader(), epochs=1, checkpoint=ckpt,
                         **FAST)  # fmt: skip
    state = load_checkpoint(ckpt)
    del state[entry]
    torch.save(state, ckpt)
    explainer = tiny_explainer(seed=1)
    before = _state(explainer)
    with pytest.raises(ValueError, match=f"is incomplete: it lacks {entry}"):
        explainer.fit(tiny_classifier().eval(), tuple_loader(), epochs=2, resume=ckpt, **FAST)
    assert _unchanged(explainer, before)


def test_extra_arguments_reach_the_classifier_on_every_call_with_a_target():
    """A fresh object and one that explained before treat one call alike: extra arguments the
    classifier does not take fail both times (before, only the first call ran the classifier
    and later ones ignored them)."""
    classifier, explainer = tiny_classifier().eval(), tiny_explainer()
    images, labels = data(4)
    fresh, used = (
        ExplainerAttribution(classifier, explainer),
        ExplainerAttribution(classifier, explainer),
    )
    used.attribute(images, target=labels)
    for attribution in (fresh, used):
        with pytest.raises(TypeError, match="positional argument"):
            attribution.attribute(images, target=labels, additional_forward_args=5)
        # inputs in a dtype the classifier cannot take: checked again, refused by it alike
        with pytest.raises(RuntimeError, match="type"):
            attribution.attribute(images.double(), target=labels)
