"""Per-example tensors inside containers of ``additional_forward_args`` follow their examples.

A model may take its per-example extras as a dict, a list or a named tuple. CTC repeats each
such tensor once per copy (and slices it when it explains the examples in groups) as it does a
bare tensor, in every sharing mode; a tensor whose rows only by chance equal the number of
examples makes the model fail with torch's error and a note saying what was repeated.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT
from ctc_plugin.inputs import example_rows, holds_per_example, map_per_example

Scales = collections.namedtuple("Scales", ["scale", "label"])


class ScaledByExtras(nn.Module):
    """Logits scaled per example by an extra tensor that arrives in one of several forms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor, extra) -> torch.Tensor:
        if isinstance(extra, dict):
            scale = extra["scale"]
        elif isinstance(extra, Scales):
            scale = extra.scale
        elif isinstance(extra, list):
            scale = extra[0]
        else:
            scale = extra
        return self.head(self.body(x)) * scale


FORMS = {
    "bare": lambda s: s,
    "dict": lambda s: {"scale": s, "note": "kept"},
    "list": lambda s: [s, 7],
    "named tuple": lambda s: Scales(s, "kept"),
    "ordered dict": lambda s: collections.OrderedDict(scale=s),
}


@pytest.fixture(scope="module")
def setting():
    model = ScaledByExtras().eval()
    x = torch.rand(3, 3, 8, 8)
    scale = torch.tensor([[1.0], [2.0], [-0.5]])
    mask = torch.arange(16).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return model, x, scale, mask[None, None]


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
@pytest.mark.parametrize("form", [name for name in FORMS if name != "bare"])
def test_a_per_example_tensor_in_a_container_equals_it_bare(setting, mode, form):
    model, x, scale, mask = setting
    ctc = CTC(model, bias_sharing=mode)
    expected = ctc.attribute(x, target=1, feature_mask=mask, additional_forward_args=(scale,))
    got = ctc.attribute(
        x, target=1, feature_mask=mask, additional_forward_args=(FORMS[form](scale),)
    )
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_examples_explained_in_groups_get_their_own_rows_of_a_nested_tensor(setting):
    model, x, scale, mask = setting
    ctc = CTC(model, bias_sharing="proportional")
    together = ctc.attribute(x, target=1, feature_mask=mask, additional_forward_args=(scale,))
    ctc._speedups = dataclasses.replace(DEFAULT, copies_per_pass=1)  # one example per pass
    nested = ctc.attribute(
        x, target=1, feature_mask=mask, additional_forward_args=({"scale": scale},)
    )
    torch.testing.assert_close(nested, together, rtol=1e-6, atol=1e-7)
    for i in range(3):  # each example as if explained alone
        alone = ctc.attribute(
            x[i : i + 1], target=1, feature_mask=mask, additional_forward_args=(scale[i : i + 1],)
        )
        torch.testing.assert_close(nested[i : i + 1], alone, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["proportional", "reference"])
def test_a_constant_with_as_many_rows_as_examples_fails_with_a_note(mode):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()

    def weighted(x, class_weights):
        return model(x) * class_weights

    x = torch.rand(3, 3, 2, 2)  # three examples and three classes: the weights look per example
    mask = torch.arange(4).reshape(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"repeated every tensor .* first dimension of 1"):
        CTC(weighted, bias_sharing=mode).attribute(
            x, target=0, feature_mask=mask, additional_forward_args=(torch.ones(3),)
        )
    # given as the note says, it is the same constant for every copy
    got = CTC(weighted, bias_sharing=mode).attribute(
        x, target=0, feature_mask=mask, additional_forward_args=(torch.ones(3)[None],)
    )
    plain = CTC(model, bias_sharing=mode).attribute(x, target=0, feature_mask=mask)
    torch.testing.assert_close(got, plain)


def test_map_per_example_rebuilds_containers_of_their_own_types():
    n = 2
    rows, other = torch.zeros(n, 3), torch.zeros(5)
    default = collections.defaultdict(list, {"a": rows})
    value = (rows, [rows, other], {"b": (rows, "text")}, Scales(rows, 1), default, other)
    doubled = map_per_example(value, n, lambda t: t + 1)
    assert type(doubled[3]) is Scales and type(doubled[4]) is collections.defaultdict
    assert doubled[4].default_factory is list
    ones = [doubled[0], doubled[1][0], doubled[2]["b"][0], doubled[3].scale, doubled[4]["a"]]
    assert all(torch.equal(t, torch.ones(n, 3)) for t in ones)
    assert doubled[1][1] is other and doubled[5] is other and doubled[2]["b"][1] == "text"
    assert holds_per_example(value, n) and not holds_per_example((other, [other]), n)
    assert example_rows({"a": rows}, n, slice(1, 2))["a"].shape == (1, 3)


class _Pair(tuple):
    """A tuple subclass with a constructor of its own (not rebuilt from an iterable)."""

    def __new__(cls, first, second):
        return super().__new__(cls, (first, second))


def test_containers_without_per_example_tensors_reach_the_model_as_the_same_objects(setting):
    model, x, scale, mask = setting
    log: dict[str, list] = {"calls": []}
    pair = _Pair(torch.ones(1), "kept")
    cyclic: list = [1]
    cyclic.append(cyclic)

    def forward(images, extra, state, pair_, cycle):
        state["calls"].append(len(images))  # the caller's dict, written by the model
        assert pair_ is pair and cycle is cyclic
        return model(images, extra)

    ctc = CTC(forward, bias_sharing="proportional")
    ctc.attribute(
        x, target=1, feature_mask=mask, additional_forward_args=(scale, log, pair, cyclic)
    )
    assert log["calls"], "the model wrote into a copy of the caller's dict"
    value = ({"a": [pair, "text"]}, cyclic)
    assert map_per_example(value, 3, lambda t: t + 1) is value


def test_a_container_that_cannot_be_rebuilt_with_repeated_tensors_is_named():
    with pytest.raises(TypeError, match=r"holds a _Pair .* pass those tensors as arguments"):
        map_per_example((_Pair(torch.zeros(3, 2), "x"),), 3, lambda t: t + 1)


def test_without_the_gradient_shortcut_none_repeats_nested_tensors_too(setting):
    model, x, scale, mask = setting
    ctc = CTC(model, bias_sharing="none")
    ctc._speedups = dataclasses.replace(DEFAULT, gradient_shortcut=False)
    bare = ctc.attribute(x, target=1, feature_mask=mask, additional_forward_args=(scale,))
    nested = ctc.attribute(
        x, target=1, feature_mask=mask, additional_forward_args=({"scale": scale},)
    )
    torch.testing.assert_close(nested, bare, rtol=1e-6, atol=1e-7)


def test_a_dtype_error_with_per_example_extras_gets_no_note_on_them(setting):
    from ctc_plugin import DtypeMismatchError

    model, x, scale, mask = setting
    with pytest.raises(DtypeMismatchError) as caught:
        CTC(model, bias_sharing="proportional").attribute(
            x.double(), target=1, feature_mask=mask, additional_forward_args=(scale.double(),)
        )
    assert "additional_forward_args" not in str(caught.value)


class _Conditioned(nn.Module):
    """An image and a per-example condition vector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.embed, self.head = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Linear(2, 4),
            nn.Linear(4, 3),
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)) + self.embed(condition))


@pytest.mark.parametrize("mode", ["proportional", "none", "reference"])
@pytest.mark.parametrize("in_a_dict", [False, True], ids=["bare", "dict"])
def test_a_per_example_argument_with_the_wrong_rows_is_named(mode, in_a_dict) -> None:
    """It read as a model CTC does not support ("a constant of shape (3, 4) ...")."""
    torch.manual_seed(0)
    model = _Conditioned().eval()
    condition = torch.rand(3, 2)  # 3 rows for 2 images
    forward, extra = model, (condition,)
    if in_a_dict:
        forward, extra = (lambda x, named: model(x, **named)), ({"condition": condition},)
    mask = torch.arange(64).view(1, 1, 8, 8) // 16
    expected = r"additional_forward_args holds a tensor of shape \(3, 2\), whose first dimension"
    with pytest.raises(RuntimeError, match=expected + " is not the number of examples, 2"):
        CTC(forward, bias_sharing=mode).attribute(
            torch.rand(2, 3, 8, 8), 1, feature_mask=mask, additional_forward_args=extra
        )


def test_a_tensor_that_is_not_the_refused_constant_is_not_blamed() -> None:
    """A condition bound in a closure with one row too many was refused; the note blamed the
    class weights of shape (3,) passed beside it, whose first dimension the constant lacks."""
    torch.manual_seed(0)
    model = _Conditioned().eval()
    condition = torch.rand(4, 2)  # 4 rows for 2 images, bound in the forward function

    def forward(x, class_weights):
        return model(x, condition) * class_weights

    mask = torch.arange(64).view(1, 1, 8, 8) // 16
    with pytest.raises(RuntimeError, match=r"a constant of shape \(4, 4\)") as raised:
        CTC(forward).attribute(
            torch.rand(2, 3, 8, 8), 1, feature_mask=mask, additional_forward_args=(torch.rand(3),)
        )
    assert "additional_forward_args" not in str(raised.value)
