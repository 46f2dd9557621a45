"""Bad inputs and targets: the same clear error from every method, the model untouched (issue 20).

Every attribution method (``CTC`` with and without a feature mask, ``CTCAttributor``,
``IntegrativeCAM``, ``ExplainerAttribution``) and the segmenters get several examples of each
class of bad input: not a tensor, an empty tuple, a dtype that is not floating point, a missing
batch dimension, an empty batch, tuple members of different batch sizes, NaN or infinite values;
and of each class of bad target: not integer class indices (floats, bools, complex numbers, in
every Captum form), out of range, the wrong number. Each must raise the same error type with the
same message fragment, and leave the model exactly as it was: state dict, train/eval flags,
``requires_grad`` flags, hooks and torch's function-mode stack. A classifier in training mode is
refused the same way by every method. Negative targets count from the end everywhere (Captum).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from ctc_plugin import CTC, CTCAttributor, ExplainerAttribution, IntegrativeCAM
from ctc_plugin.ctc.speedups import Speedups
from ctc_plugin.evaluation.arguments import as_targets
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter
from ctc_plugin.features.relevance import resolve_target
from ctc_plugin.inputs import TrainingModeError
from ctc_plugin.targets import class_indices, resolve_targets
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

CLASSES = 4
SIZE = 8


def _model() -> nn.Module:
    return RandomCNN(CNNSpec(classes=CLASSES), seed=0).eval()


def _explainer() -> Explainer:
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", CLASSES, width=2), CLASSES).eval()
    explainer.trained_steps.fill_(1)  # counts as trained: no warning
    return explainer


MODEL = _model()
EXPLAINER = _explainer()
MASK = random_partition(SIZE, SIZE, 3)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


#: Every method as ``run(model, inputs, target)``. ``CTCAttributor`` takes Zennit's
#: ``attr_output``, not Captum targets, so it runs for the input checks with the predicted class.
METHODS: dict[str, Callable[[nn.Module, Any, Any], Any]] = {
    "CTC": lambda m, x, t: CTC(m, segmenter=GridSegmenter(2)).attribute(x, target=t),
    "CTC-mask": lambda m, x, t: CTC(m).attribute(x, target=t, feature_mask=MASK),
    "CTCAttributor": lambda m, x, t: CTCAttributor(m, segmenter=GridSegmenter(2))(x),
    "IntegrativeCAM": lambda m, x, t: IntegrativeCAM(m).attribute(x, target=t),
    "Explainer": lambda m, x, t: ExplainerAttribution(m, EXPLAINER).attribute(x, target=t),
}
#: The methods that take Captum targets.
TARGET_METHODS = ["CTC", "CTC-mask", "IntegrativeCAM", "Explainer"]
#: The methods that take a tuple of inputs (Captum's convention).
TUPLE_METHODS = ["CTC", "CTC-mask", "IntegrativeCAM", "Explainer"]
#: The methods that need image batches (N, C, H, W): ``CTC`` with a mask takes any (N, ...).
IMAGE_METHODS = ["CTC", "CTCAttributor", "IntegrativeCAM", "Explainer"]
SEGMENTERS = {"SuperpixelSegmenter": SuperpixelSegmenter(), "GridSegmenter": GridSegmenter(2)}


def snapshot(*models: nn.Module) -> list:
    """Everything a call could change about the models (and torch's function-mode stack)."""
    state = []
    for model in models:
        state.append({k: v.clone() for k, v in model.state_dict(keep_vars=False).items()})
        state.append([m.training for m in model.modules()])
        state.append([p.requires_grad for p in model.parameters()])
        state.append(
            [
                (
                    len(m._forward_hooks),
                    len(m._forward_pre_hooks),
                    len(m._backward_hooks),
                    len(m._backward_pre_hooks),
                )
                for m in model.modules()
            ]
        )
    state.append(torch._C._len_torch_function_stack())
    state.append(torch.is_grad_enabled())
    return state


def assert_same(before: list, after: list) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert a == b


def refuses(
    method: str, inputs: Any, target: Any, error: type[Exception], fragment: str, model=None
) -> str:
    """Call ``method``; assert it raises ``error`` matching ``fragment`` and changes nothing."""
    model = MODEL if model is None else model
    before = snapshot(model, EXPLAINER)
    with pytest.raises(error, match=fragment) as caught:
        METHODS[method](model, inputs, target)
    assert_same(before, snapshot(model, EXPLAINER))
    return str(caught.value)


# ---------------------------------------------------------------------------- inputs
NOT_TENSORS = {
    "numpy NCHW": (lambda: images().numpy(), r"numpy array .* torch\.from_numpy\(x\)"),
    "numpy NHWC uint8": (
        lambda: (images().permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
        r"torch\.from_numpy\(x\)\.permute\(0, 3, 1, 2\)\.float\(\) / 255",
    ),
    "PIL image": (lambda: Image.new("RGB", (SIZE, SIZE)), r"PIL image; .*to_tensor"),
    "list of tensors": (lambda: list(images()), r"torch\.stack"),
    "nested list": (lambda: images().tolist(), "a list of 2"),
    "None": (lambda: None, "NoneType"),
}


@pytest.mark.parametrize("case", sorted(NOT_TENSORS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_inputs_that_are_not_tensors_are_a_type_error_with_the_conversion(method, case):
    make, hint = NOT_TENSORS[case]
    refuses(method, make(), 1, TypeError, r"must be a torch\.Tensor, got .*" + hint)


@pytest.mark.parametrize("case", sorted(NOT_TENSORS))
@pytest.mark.parametrize("segmenter", sorted(SEGMENTERS))
def test_segmenters_refuse_what_is_not_a_tensor_the_same_way(segmenter, case):
    make, hint = NOT_TENSORS[case]
    with pytest.raises(TypeError, match=r"images must be a torch\.Tensor, got .*" + hint):
        SEGMENTERS[segmenter](make())


@pytest.mark.parametrize("method", TUPLE_METHODS)
def test_an_empty_tuple_is_refused(method):
    refuses(method, (), 1, ValueError, "inputs is an empty tuple")


@pytest.mark.parametrize("method", TUPLE_METHODS)
def test_tuple_members_must_share_the_batch(method):
    if method == "Explainer":  # takes one tensor
        refuses(method, (images(2), images(1)), 1, ValueError, "takes one input tensor, got 2")
        return
    message = refuses(method, (images(2), images(3)), 1, ValueError, "share dimension 0")
    assert "inputs[0] has 2 examples but inputs[1] has 3" in message


@pytest.mark.parametrize("method", ["CTCAttributor"])
def test_single_tensor_methods_refuse_tuples(method):
    refuses(method, (images(),), 1, TypeError, "must be one torch.Tensor, got a tuple of 1")


DTYPES = {
    "uint8": (lambda: (images() * 255).to(torch.uint8), r"x\.float\(\) / 255"),
    "int64": (lambda: (images() * 10).long(), r"x\.float\(\)"),
    "bool": (lambda: images() > 0.5, r"x\.float\(\)"),
    "complex": (lambda: images().to(torch.complex64), r"real inputs"),
}


@pytest.mark.parametrize("case", sorted(DTYPES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_floating_inputs_are_refused_with_the_conversion(method, case):
    make, hint = DTYPES[case]
    refuses(method, make(), 1, ValueError, f"must be a floating-point tensor, got dtype .*{hint}")


@pytest.mark.parametrize("case", sorted(DTYPES))
def test_value_reading_segmenters_refuse_non_floating_images_the_same_way(case):
    make, hint = DTYPES[case]
    with pytest.raises(ValueError, match=f"must be a floating-point tensor, got dtype .*{hint}"):
        SuperpixelSegmenter()(make())
    assert GridSegmenter(2)(make()).shape == (2, 1, SIZE, SIZE)  # reads only the shape


SHAPES = {
    "one image (C, H, W)": (lambda: images(1)[0], r"add the batch dimension: x\.unsqueeze\(0\)"),
    "one gray image (H, W)": (lambda: images(1)[0, 0], r"got shape \(8, 8\)"),
    "a row (W,)": (lambda: images(1)[0, 0, 0], r"got shape \(8,\)"),
    "5-D": (lambda: images(2)[None], r"got shape \(1, 2, 3, 8, 8\)"),
    "channels-last": (
        lambda: images(2).permute(0, 2, 3, 1).contiguous(),
        r"channels-last: x\.permute\(0, 3, 1, 2\)",
    ),
}


IMAGE_SHAPE_CASES = [
    (method, case)
    for method in IMAGE_METHODS
    for case in sorted(SHAPES)
    # only a method that knows its channel count can tell a channels-last batch
    if case != "channels-last" or method == "Explainer"
]


@pytest.mark.parametrize(("method", "case"), IMAGE_SHAPE_CASES)
def test_image_methods_refuse_what_is_not_an_image_batch(method, case):
    make, hint = SHAPES[case]
    fragment = r"must be a batch of images \(N, [C3], H, W\), .*" + hint
    refuses(method, make(), 1, ValueError, fragment)


@pytest.mark.parametrize("case", ["one image (C, H, W)", "one gray image (H, W)", "5-D"])
@pytest.mark.parametrize("segmenter", sorted(SEGMENTERS))
def test_segmenters_refuse_what_is_not_an_image_batch_the_same_way(segmenter, case):
    make, hint = SHAPES[case]
    with pytest.raises(ValueError, match=r"images must be a batch of images \(N, [C3], H, W\)"):
        SEGMENTERS[segmenter](make())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_scalars_need_a_batch_dimension(method):
    for scalar in (torch.tensor(0.5), torch.tensor(float("nan"), dtype=torch.float64)):
        refuses(method, scalar, 1, ValueError, r"is a scalar .* needs a batch dimension")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_empty_batch_is_refused(method):
    for empty in (images(2)[:0], torch.empty(0, 3, 4, 4), torch.empty(0, 3, 8, 8).double()):
        refuses(method, empty, 1, ValueError, r"is an empty batch \(N = 0\)")


@pytest.mark.parametrize("segmenter", sorted(SEGMENTERS))
def test_segmenters_refuse_an_empty_batch_the_same_way(segmenter):
    with pytest.raises(ValueError, match=r"images is an empty batch \(N = 0\)"):
        SEGMENTERS[segmenter](images(2)[:0])


#: Image batches of one or more images without a pixel (a crop or resize to nothing).
NO_PIXELS = [(1, 3, 0, 5), (2, 3, 5, 0), (1, 3, 0, 0)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_images_without_pixels_are_refused(method):
    """Was: torch's errors from deep inside (``min(): Expected reduction dim to be specified``,
    ``range() arg 3 must not be zero``)."""
    for shape in NO_PIXELS:
        # CTC and CTCAttributor check inputs of any shape: no values per example
        refuses(method, torch.rand(shape), 1, ValueError, r"has no (pixels \(height \d+|values)")


@pytest.mark.parametrize(
    "segmenter",
    [
        *(SuperpixelSegmenter(method) for method in ("slic", "felzenszwalb", "quickshift")),
        SuperpixelSegmenter("watershed"),
        SuperpixelSegmenter(value_range="auto"),
        GridSegmenter(2),
    ],
    ids=["slic", "felzenszwalb", "quickshift", "watershed", "slic-auto", "grid"],
)
def test_segmenters_refuse_images_without_pixels_the_same_way(segmenter):
    for shape in NO_PIXELS:
        with pytest.raises(ValueError, match=r"images has no pixels \(height \d+, width \d+\)"):
            segmenter(torch.rand(shape))


def test_inputs_without_values_are_refused_where_any_shape_is_taken():
    """CTC with a feature mask takes inputs of any shape (N, ...): an example must hold a
    value."""
    for shape in ((2, 0), (1, 3, 0, 5)):
        refuses("CTC-mask", torch.rand(shape), 1, ValueError, r"has no values")
    for shape in ((2, 0), (2, 4, 0)):
        with pytest.raises(ValueError, match=r"inputs\[1\] has no values"):
            CTC(MODEL).attribute((images(2), torch.rand(shape)), target=1, feature_mask=MASK)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    bad=st.lists(
        st.sampled_from([float("nan"), float("inf"), -float("inf")]), min_size=1, max_size=12
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_non_finite_inputs_are_refused_with_their_count(data, bad, dtype):
    x = images(3).to(dtype)
    cells = x.numel()
    positions = data.draw(
        st.lists(st.integers(0, cells - 1), min_size=len(bad), max_size=len(bad), unique=True)
    )
    x.view(-1)[torch.tensor(positions)] = torch.tensor(bad, dtype=dtype)
    count = len(positions)
    examples = sorted({p // (cells // 3) for p in positions})
    where = (
        f"example {examples[0]}"
        if len(examples) == 1
        else "examples " + ", ".join(map(str, examples))
    )
    for method in METHODS:
        name = "input" if method == "CTCAttributor" else "inputs"
        message = refuses(method, x, 1, ValueError, f"{name}: {count} NaN or infinite")
        assert f"(in {where})" in message
    with pytest.raises(ValueError, match=f"images: {count} NaN or infinite"):
        SuperpixelSegmenter()(x)


# ---------------------------------------------------------------------------- targets
NOT_INTEGERS = {
    "float": 1.7,
    "whole float": 2.0,
    "nan": float("nan"),
    "bool": True,
    "complex": 1 + 0j,
    "numpy float": np.float64(1.0),
    "numpy bool": np.bool_(True),
    "float tensor": torch.tensor([1.7]),
    "0-d float tensor": torch.tensor(3.0),
    "per-example float tensor": torch.tensor([0.0, 1.0]),
    "half tensor": torch.tensor([1, 2], dtype=torch.float16),
    "bool tensor": torch.tensor([True, False]),
    "complex tensor": torch.tensor([1 + 0j, 2 + 0j]),
    "float list": [1.0, 2.5],
    "list with a bool": [1, False],
    "list with a float tensor": [torch.tensor(1.0), 2],
    "tuple of floats": (1.0,),
}


@pytest.mark.parametrize("case", sorted(NOT_INTEGERS))
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_targets_that_are_not_integer_class_indices_are_refused(method, case):
    message = refuses(method, images(2), NOT_INTEGERS[case], ValueError, "integer class indices")
    assert "e.g. target=" in message


@settings(max_examples=30, deadline=None)
@given(
    value=st.floats(allow_nan=True, allow_infinity=True),
    form=st.sampled_from(["float", "tensor", "list", "0-d tensor"]),
)
def test_random_float_targets_are_never_truncated(value, form):
    target = {
        "float": value,
        "tensor": torch.tensor([value, value]),
        "list": [0, value],
        "0-d tensor": torch.tensor(value, dtype=torch.float64),
    }[form]
    for method in TARGET_METHODS:
        refuses(method, images(2), target, ValueError, "integer class indices")


OUT_OF_RANGE = {"4": 4, "-5": -5, "100": 100, "[0, 9]": [0, 9], "tensor([-7, 0])": None}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_targets_out_of_range_are_refused_with_the_valid_range(method, case):
    target = OUT_OF_RANGE[case] if case != "tensor([-7, 0])" else torch.tensor([-7, 0])
    refuses(
        method, images(2), target, ValueError, r"out of range: .* valid indices are 0\.\.3, or -4"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([0, 1, 2], "got 3 targets for 2 examples"),
        ([3], "got 1 target for 2 examples"),
        (torch.tensor([0, 1, 2]), "got 3 targets for 2 examples"),
    ],
)
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_the_wrong_number_of_targets_is_refused(method, target, message):
    refuses(method, images(2), target, ValueError, message)


@pytest.mark.parametrize("target", ["cat", {1: 2}, np.array([1, 2]), torch.zeros(2, 2).long()])
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_targets_of_other_forms_are_refused(method, target):
    refuses(method, images(2), target, ValueError, "target")


@pytest.mark.parametrize("method", TARGET_METHODS)
def test_negative_targets_count_from_the_end_in_every_method(method):
    x = images(2, seed=3)
    run = METHODS[method]
    for negative, positive in [(-1, 3), ([-4, -2], [0, 2]), (torch.tensor([-3, 1]), [1, 1])]:
        torch.testing.assert_close(run(MODEL, x, negative), run(MODEL, x, positive))


def test_ctc_names_the_example_whose_target_is_out_of_range_when_it_runs_in_groups():
    ctc = CTC(MODEL)
    ctc._speedups = Speedups(copies_per_pass=4)  # one example per pass
    with pytest.raises(ValueError, match="target 9 for example 2 is out of range"):
        ctc.attribute(images(3), target=[0, 1, 9], feature_mask=MASK)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-CLASSES, CLASSES - 1), min_size=1, max_size=5))
def test_every_target_resolver_agrees_on_integer_targets(classes):
    n = len(classes)
    expected = torch.tensor([c % CLASSES for c in classes])
    output = torch.zeros(n, CLASSES)
    for target in (classes, torch.tensor(classes), [(c,) for c in classes]):
        assert torch.equal(resolve_targets(target, output), expected)
        assert torch.equal(class_indices(target, n, CLASSES), expected)
    assert torch.equal(as_targets(classes, n), torch.tensor(classes))
    assert torch.equal(as_targets(np.array(classes), n), torch.tensor(classes))
    assert torch.equal(resolve_target(MODEL, images(n), classes), torch.tensor(classes))


@pytest.mark.parametrize("case", ["float", "float tensor", "float list", "bool tensor"])
def test_evaluation_and_relevance_targets_refuse_what_attribution_refuses(case):
    target = NOT_INTEGERS[case]
    n = 2 if case != "float" else 1
    with pytest.raises(ValueError, match="integer class indices"):
        as_targets(target, n)
    with pytest.raises(ValueError, match="integer class indices"):
        as_targets(np.array([0.5, 1.5]), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        resolve_target(MODEL, images(n), target)


# ---------------------------------------------------------------------------- model mode
@pytest.mark.parametrize("mode", ["batch norm", "dropout", "dropout between LSTM layers"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_classifier_in_training_mode_is_refused_and_left_as_it_was(method, mode):
    model = _model()
    if mode == "batch norm":
        model.train()
    elif mode == "dropout":
        model.add_module("dropout", nn.Dropout(0.5).train())  # a module the forward never calls
    else:
        model.add_module("lstm", nn.LSTM(4, 4, num_layers=2, dropout=0.5).train())
    refuses(method, images(2), 1, TrainingModeError, r"training mode.*model\.eval\(\)", model)
    assert model.training == (mode == "batch norm")


def test_explainer_attribution_leaves_a_training_classifier_s_batch_norm_statistics_alone():
    """The train-mode classifier used to be run for the predicted class, updating BatchNorm."""
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for target in (None, 1, [0, 2]):
        with pytest.raises(TrainingModeError, match="BatchNorm2d"):
            ExplainerAttribution(model, EXPLAINER).attribute(images(2), target=target)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    assert ExplainerAttribution(model, EXPLAINER).attribute(images(2)).shape == (2, 3, 8, 8)


def test_messages_name_the_argument_the_user_passed():
    with pytest.raises(ValueError, match=re.escape("inputs[1] must be a floating-point")):
        CTC(MODEL).attribute((images(), images().long()), target=0, feature_mask=(MASK, MASK))
    with pytest.raises(TypeError, match=re.escape("inputs[0] must be a torch.Tensor")):
        IntegrativeCAM(MODEL).attribute((images().numpy(),), target=0)
