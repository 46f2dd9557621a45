"""Target resolution against Captum's own (private) selector, form by form."""

from __future__ import annotations

import pytest
import torch
from captum._utils.common import _select_targets

from ctc_plugin.targets import example_targets, output_not_a_tensor, resolve_targets
from ctc_plugin.targets import target_scores as select_scores

OUTPUT_2D = torch.randn(3, 5)
OUTPUT_3D = torch.randn(3, 4, 2)


@pytest.mark.parametrize(
    ("output", "target"),
    [
        (OUTPUT_2D, 2),
        (OUTPUT_2D, torch.tensor(4)),
        (OUTPUT_2D, torch.tensor([0, 3, 1])),
        (OUTPUT_2D, [1, 1, 0]),
        (OUTPUT_3D, (1, 0)),
        (OUTPUT_3D, [(0, 1), (3, 0), (2, 1)]),
    ],
)
def test_matches_captum(output: torch.Tensor, target) -> None:
    torch.testing.assert_close(select_scores(output, target), _select_targets(output, target))


def test_none_is_the_predicted_class_and_callables_get_rows() -> None:
    torch.testing.assert_close(select_scores(OUTPUT_2D, None), OUTPUT_2D.max(dim=1).values)
    picked = select_scores(OUTPUT_2D, [lambda row, k=k: row[k] for k in (4, 0, 2)])
    torch.testing.assert_close(picked, OUTPUT_2D[[0, 1, 2], [4, 0, 2]])


@pytest.mark.parametrize("target", [[0, 1], (1,), torch.zeros(2, 2, dtype=torch.long), "a"])
def test_bad_targets_are_clear_errors(target) -> None:
    with pytest.raises(ValueError):
        select_scores(OUTPUT_3D if isinstance(target, tuple) else OUTPUT_2D, target)


def test_a_dict_output_is_told_its_keys() -> None:
    """Its keys, not ``model(x)[0]`` (a KeyError)."""
    message = str(output_not_a_tensor({"logits": torch.zeros(1, 3), "features": torch.zeros(1)}))
    assert "[0]" not in message and "'logits', 'features'" in message


def test_a_backbones_output_is_said_to_hold_no_scores() -> None:
    """A Hugging Face backbone's output (an ordered dict without logits): ``[0]`` would be its
    last hidden state, so the message points to a classification head instead."""
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")
    output = modeling_outputs.BaseModelOutputWithPooling(
        last_hidden_state=torch.zeros(1, 17, 8), pooler_output=torch.zeros(1, 8)
    )
    message = str(output_not_a_tensor(output))
    assert "[0]" not in message and "'last_hidden_state', 'pooler_output'" in message
    assert "ForImageClassification" in message


def test_negative_targets_count_from_the_end_of_each_examples_output():
    output = torch.zeros(2, 6)
    assert resolve_targets(-1, output).tolist() == [5, 5]
    assert resolve_targets([-6, -2], output).tolist() == [0, 4]
    tuples = torch.zeros(2, 2, 3)  # flat indices into (2, 3) per example
    assert resolve_targets([(-1, -1), (0, -3)], tuples).tolist() == [5, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool])
def test_multi_hot_labels_given_as_a_target_say_to_explain_one_class_per_call(dtype):
    labels = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 1]]).to(dtype)
    with pytest.raises(ValueError, match=r"multi-hot labels.*target=c for c in range"):
        example_targets(labels, 4)
    # a (N, 2) tensor of other values is not taken for labels
    with pytest.raises(ValueError, match="one class or one per example"):
        example_targets(torch.tensor([[0, 2], [1, 3]]), 2)
