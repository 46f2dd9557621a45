"""``fit`` on the data and models users bring: what it refuses up front, and what Ctrl-C keeps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters

from .helpers import FAST, NUM_CLASSES, data, tiny_classifier, tiny_explainer, tuple_loader


def _state(explainer: Explainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in explainer.state_dict().items()}


def _equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_multi_hot_label_without_a_class_is_refused_before_training():
    images, labels = data(8, multilabel=True)
    labels[6] = 0.0
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(
        ValueError, match=r"labels of validation batch 1: example 2 has no class .* leave such"
    ):
        explainer.fit(
            tiny_classifier(), tuple_loader(multilabel=True), [(images[:4], labels[:4]),
            (images[4:], labels[4:])], epochs=2, **FAST,
        )  # fmt: skip
    assert _equal(before, _state(explainer)) and not explainer.is_trained
    with pytest.raises(ValueError, match=r"labels of training batch 1 of epoch 1: example 2"):
        explainer.fit(tiny_classifier(), [(images[:4], labels[:4]), (images[4:], labels[4:])],
                      **FAST)  # fmt: skip


def test_float_class_indices_get_the_conversion():
    images, labels = data(4)
    with pytest.raises(ValueError, match=r"labels.long\(\)"):
        tiny_explainer().fit(tiny_classifier(), [(images, labels.float())], **FAST)


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (TensorDataset(*data(4)), r"a dataset \(TensorDataset\) .*DataLoader\(dataset"),
        (data(4), r"holds tensors, not batches.*\[\(images, labels\)\]"),
        (3, "must be an iterable of batches"),
    ],
)
def test_what_is_not_a_loader_of_batches_is_refused_with_what_to_pass(loader, message):
    with pytest.raises(TypeError, match=message):
        tiny_explainer().fit(tiny_classifier(), loader, **FAST)


def test_the_config_given_where_the_validation_loader_goes_is_named():
    with pytest.raises(TypeError, match=r"val_loader got an ExplainerHyperparameters.*config="):
        tiny_explainer().fit(tiny_classifier(), tuple_loader(), ExplainerHyperparameters())


def test_gray_images_for_an_rgb_explainer_name_in_channels():
    classifier = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, NUM_CLASSES)).eval()  # fmt: skip
    images, labels = data(4)
    with pytest.raises(ValueError, match=r"have 1 channel, .* takes 3: .*in_channels=1"):
        tiny_explainer().fit(classifier, [(images[:, :1], labels)], **FAST)


def test_a_classifier_returning_probabilities_is_warned_about_at_the_callers_line():
    probabilities = nn.Sequential(tiny_classifier(), nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match="look like probabilities") as caught:
        tiny_explainer().fit(probabilities, tuple_loader(), epochs=1, **FAST)
    assert {warning.filename for warning in caught} == {__file__}


def test_a_multilabel_classifier_ending_in_a_sigmoid_is_warned_about():
    sigmoid = nn.Sequential(tiny_classifier(), nn.Sigmoid()).eval()
    multilabel = tuple_loader(multilabel=True)
    with pytest.warns(UserWarning, match="look like sigmoid probabilities") as caught:
        tiny_explainer().fit(sigmoid, multilabel, epochs=1, **FAST)
    assert {warning.filename for warning in caught} == {__file__}
    with warnings.catch_warnings():  # its logits: no warning
        warnings.simplefilter("error", UserWarning)
        tiny_explainer().fit(tiny_classifier().eval(), multilabel, epochs=1, **FAST)


def test_labels_of_one_column_and_outputs_of_size_one_dimensions_get_the_fix():
    images, labels = data(4)
    with pytest.raises(ValueError, match=r"labels\.squeeze\(1\)"):
        tiny_explainer().fit(tiny_classifier(), [(images, labels[:, None])], **FAST)
    four_d = nn.Sequential(tiny_classifier(), nn.Unflatten(1, (NUM_CLASSES, 1, 1))).eval()
    with pytest.raises(ValueError, match=r"model\(x\)\.flatten\(1\)") as caught:
        tiny_explainer().fit(four_d, [(images, labels)], **FAST)
    assert "class-count mismatch" not in str(caught.value)


def test_an_iterable_dataset_that_streams_batches_is_a_loader():
    """Streaming pipelines yield whole batches from an IterableDataset: not refused."""

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            images, labels = data(8)
            yield from ((images[:4], labels[:4]), (images[4:], labels[4:]))

    result = tiny_explainer().fit(tiny_classifier(), Batches(), epochs=1, **FAST)
    assert result.steps == 2


@pytest.mark.parametrize("lr", [float("inf"), True])
def test_a_learning_rate_that_is_no_finite_number_is_refused(lr):
    with pytest.raises(ValueError, match="lr must be a finite non-negative number"):
        ExplainerHyperparameters(lr=lr)


def test_a_refused_resume_names_both_values(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    tiny_explainer().fit(tiny_classifier(), tuple_loader(), epochs=1, checkpoint=checkpoint,
                         **FAST)  # fmt: skip
    with pytest.raises(ValueError, match=r"lr: 0.01 there, 0.5 now"):
        tiny_explainer().fit(tiny_classifier(), tuple_loader(), epochs=2, resume=checkpoint,
                             config=ExplainerHyperparameters(lr=0.5),
                             show_progress=False)  # fmt: skip


class Interrupting:
    """Batches of ``loader``; Ctrl-C at batch ``at`` of pass ``on_pass`` (counted from 0)."""

    def __init__(self, loader, on_pass: int, at: int = 1) -> None:
        self.loader, self.on_pass, self.at, self.passes = loader, on_pass, at, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if self.passes == self.on_pass and index == self.at:
                raise KeyboardInterrupt
            yield batch
        self.passes += 1


def test_ctrl_c_keeps_the_best_finished_epoch():
    torch.manual_seed(0)
    finished = tiny_explainer()
    finished.fit(tiny_classifier(), tuple_loader(shuffle=False), epochs=1, **FAST)
    torch.manual_seed(0)
    interrupted = tiny_explainer()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(tiny_classifier(), Interrupting(tuple_loader(shuffle=False), on_pass=1),
                        epochs=3, **FAST)  # fmt: skip
    kept = {k: v for k, v in _state(interrupted).items() if k != "trained_steps"}
    assert _equal(kept, {k: v for k, v in _state(finished).items() if k != "trained_steps"})
    assert interrupted.is_trained and not interrupted.training
    assert int(interrupted.trained_steps) == 3 + 1  # every step taken, as fit counts them


def test_ctrl_c_in_the_first_epoch_leaves_the_explainer_as_it_was():
    explainer = tiny_explainer()
    before = _state(explainer)
    with pytest.raises(KeyboardInterrupt):
        explainer.fit(tiny_classifier(), Interrupting(tuple_loader(), on_pass=0), **FAST)
    assert _equal(before, _state(explainer)) and not explainer.is_trained


def _generator_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(5)
    return DataLoader(TensorDataset(*data(12)), batch_size=4, shuffle=True, generator=generator)


def test_a_resume_with_the_loaders_own_generator_equals_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    whole = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
    whole.fit(tiny_classifier(), _generator_loader(), epochs=3, seed=1, **FAST)
    torch.manual_seed(0)
    first = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
    checkpoint = tmp_path / "run.ckpt"
    first.fit(tiny_classifier(), _generator_loader(), epochs=1, seed=1, checkpoint=checkpoint,
              **FAST)  # fmt: skip
    torch.manual_seed(0)
    resumed = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
    resumed.fit(tiny_classifier(), _generator_loader(), epochs=3, resume=checkpoint, **FAST)
    assert _equal(_state(whole), _state(resumed))
    with pytest.raises(ValueError, match="generators"):  # a loader without it: another order
        tiny_explainer().fit(tiny_classifier(), tuple_loader(), epochs=3, resume=checkpoint,
                             **FAST)  # fmt: skip


def test_a_batch_with_more_images_than_labels_is_named():
    images, labels = data(4)
    with pytest.raises(ValueError, match=r"batch 0 of epoch 1 holds 4 images and 3 labels"):
        tiny_explainer().fit(tiny_classifier(), [(images, labels[:3])], **FAST)
    with pytest.raises(ValueError, match=r"validation batch 0 holds 4 images and 3 labels"):
        tiny_explainer().fit(tiny_classifier(), [(images, labels)], [(images, labels[:3])], **FAST)
    with pytest.raises(ValueError, match=r"labels must be class indices .* got shape \(\)"):
        tiny_explainer().fit(tiny_classifier(), [(images, labels[0])], **FAST)  # one 0-d label
