"""Properties of CTC that hold for any model and any partition (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import Speedups
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition
from tests.strategies import cases

SETTINGS = settings(max_examples=25, deadline=None)
MODES = ["reference", "proportional", "none"]


@settings(max_examples=15, deadline=None)
@given(cases(dtype=torch.float64), st.sampled_from(MODES))
def test_float32_agrees_with_float64(case, mode):
    model, x, mask, target = case
    a64 = CTC(model, bias_sharing=mode).attribute(x, target=target, feature_mask=mask)
    a32 = CTC(model.float(), bias_sharing=mode).attribute(
        x.float(), target=target, feature_mask=mask
    )
    scale = a64.abs().max().clamp_min(1.0)
    if mode == "reference":
        # ceil-quantisation may flip where 10*z lies within float32 rounding of an integer;
        # compare feature scores with a tolerance relative to the largest score.
        torch.testing.assert_close(a32.double() / scale, a64 / scale, rtol=0, atol=2e-3)
    else:
        torch.testing.assert_close(a32.double() / scale, a64 / scale, rtol=0, atol=1e-4)


def test_target_none_is_the_predicted_class():
    from ctc_plugin.testing import RandomCNN, random_partition

    model = RandomCNN(seed=3).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    ctc = CTC(model, bias_sharing="proportional")
    _, scores = ctc.attribute(x, feature_mask=mask, return_feature_scores=True)
    predicted = model(x).argmax(1)
    assert torch.equal(scores.target, predicted)
    by_tensor = ctc.attribute(x, target=predicted, feature_mask=mask)
    by_list = ctc.attribute(x, target=predicted.tolist(), feature_mask=mask)
    default = ctc.attribute(x, feature_mask=mask)
    torch.testing.assert_close(by_tensor, default)
    torch.testing.assert_close(by_list, default)


def test_smooth_activations_take_the_full_pass_with_rescale_gates():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    ).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    mask = torch.arange(36).view(1, 1, 6, 6) // 9
    fast = CTC(model, bias_sharing="none")
    full = CTC(model, bias_sharing="none")
    full._speedups = Speedups(gradient_shortcut=False)
    torch.testing.assert_close(
        fast.attribute(x, target=0, feature_mask=mask),
        full.attribute(x, target=0, feature_mask=mask),
    )
    # rescale gates keep completeness of the proportional mode
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, target=0, feature_mask=mask, return_feature_scores=True
    )
    torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 0].detach())


class _TwoInputs(torch.nn.Module):
    """An image and a float64 vector the model turns into float32; it normalises its image in
    place (``x.sub_(...)``), as some preprocessing wrappers do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
        )
        self.vector = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 3)

    def forward(self, image, vector):
        image = image.sub_(0.5).div_(0.25)
        features = torch.cat([self.image(image).flatten(1), self.vector(vector.float())], 1)
        return self.head(features)


def test_none_shortcut_equals_the_pass_of_copies_on_mixed_dtypes_and_in_place_inputs():
    model = _TwoInputs().eval()
    image, vector = torch.rand(2, 3, 6, 6), torch.rand(2, 6, dtype=torch.float64)
    masks = (torch.arange(36).view(1, 1, 6, 6) // 12, torch.tensor([[3, 3, 4, 4, 5, 5]]))
    before = image.clone(), vector.clone()
    fast = CTC(model, bias_sharing="none")
    full = CTC(model, bias_sharing="none")
    full._speedups = Speedups(gradient_shortcut=False)
    expected = full.attribute((image, vector), 1, feature_mask=masks, return_feature_scores=True)
    actual = fast.attribute((image, vector), 1, feature_mask=masks, return_feature_scores=True)
    assert actual[1].scores.dtype == expected[1].scores.dtype == torch.float32
    torch.testing.assert_close(actual[1].scores, expected[1].scores)
    assert torch.equal(image, before[0]) and torch.equal(vector, before[1])


@settings(max_examples=20, deadline=None)
@given(
    cases(),
    st.sampled_from(MODES),
    st.sampled_from(["int", "list", "tensor"]),
    st.booleans(),
    st.sampled_from([None, 2]),
)
def test_explaining_examples_in_groups_changes_nothing(
    case, mode, target_form, with_baseline, per_eval
):
    """Groups of examples per pass (Speedups.copies_per_pass) give the one-pass results exactly."""
    model, x, mask, target = case
    n = x.shape[0]
    classes = model(x).shape[1]
    targets = {
        "int": target,
        "list": [(target + i) % classes for i in range(n)],
        "tensor": torch.tensor([(target + 2 * i) % classes for i in range(n)]),
    }[target_form]
    scale = torch.linspace(0.5, 1.5, n, dtype=x.dtype).view(n, 1)  # a per-example extra argument
    baselines = 0.25 * torch.rand_like(x) if with_baseline else None
    per_eval = None if mode == "proportional" else per_eval

    def forward(inputs, factor):
        return model(inputs) * factor

    results = []
    for copies in (1, 10**9):  # one example per pass, or the whole batch in one pass
        ctc = CTC(forward, bias_sharing=mode)
        ctc._speedups = Speedups(copies_per_pass=copies)
        results.append(
            ctc.attribute(
                x,
                target=targets,
                feature_mask=mask,
                baselines=baselines,
                additional_forward_args=(scale,),
                perturbations_per_eval=per_eval,
                return_feature_scores=True,
            )
        )
    (grouped, grouped_scores), (whole, whole_scores) = results
    torch.testing.assert_close(grouped, whole, rtol=1e-12, atol=1e-12)
    for name in ("scores", "output", "target"):
        torch.testing.assert_close(getattr(grouped_scores, name), getattr(whole_scores, name))
    if with_baseline:
        torch.testing.assert_close(grouped_scores.baseline, whole_scores.baseline)


def test_per_example_targets_of_the_wrong_length_name_the_batch_size():
    model = RandomCNN(CNNSpec(), seed=0)
    x = torch.rand(4, 3, 8, 8)
    ctc = CTC(model)
    ctc._speedups = Speedups(copies_per_pass=1)
    with pytest.raises(ValueError, match="3 targets for 4 examples"):
        ctc.attribute(x, target=[0, 1, 0], feature_mask=random_partition(8, 8, 3))
