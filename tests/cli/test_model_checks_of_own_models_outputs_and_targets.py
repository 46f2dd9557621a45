"""The checks ``explain`` and ``explain-dataset`` run on a user's model before any method.

Each refusal names the model and what to give instead; what the methods can take passes
unchanged. The class scores are one row of finite float32 values, and ``--target`` names a class
by index (in range, ASCII digits) or by a name only one class has.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.commands import CLIError
from ctc_plugin.commands.model_checks import (
    check_finite_scores,
    check_input_channels,
    check_torchscript,
    check_weights_present,
    choose_precision,
    is_own_size,
    model_logits,
    model_pixels,
    scores_row,
    size_advice,
    target_class,
)
from ctc_plugin.commands.models import LoadedModel
from ctc_plugin.images import ImagePreprocessing


def _loaded(network=None, classes=None, crop=None):
    network = network if network is not None else nn.Identity()
    preprocessing = ImagePreprocessing(resize=256 if crop else None, crop=crop)
    return LoadedModel(network, "mine:model", preprocessing, classes)


def test_the_first_convolution_must_take_rgb():
    check_input_channels(_loaded(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))))
    with pytest.raises(CLIError, match="mine:model takes 1-channel images"):
        check_input_channels(_loaded(nn.Sequential(nn.Conv2d(1, 8, 3))))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_scripted_layer_inside_a_python_model_refuses_only_the_hooking_methods():
    network = nn.Sequential(torch.jit.script(nn.Conv2d(3, 4, 3)), nn.Flatten())
    check_torchscript(_loaded(network), ["lime", "feature-ablation"])
    with pytest.raises(CLIError, match="is TorchScript") as caught:
        check_torchscript(_loaded(network), ["lime", "ctc", "gradcam"])
    assert "--method ctc gradcam cannot" in str(caught.value)


@pytest.mark.parametrize("on_meta", ["buffer", "one weight"])
def test_any_tensor_on_the_meta_device_is_refused(on_meta):
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    if on_meta == "buffer":
        network[1].register_buffer("running_mean", torch.empty(4, device="meta"))
    else:
        network[0].bias = nn.Parameter(torch.empty(4, device="meta"))
    with pytest.raises(CLIError, match="weights on the meta device"):
        check_weights_present(_loaded(network))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_run_in_float32(dtype):
    loaded = _loaded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(dtype))
    note = choose_precision(loaded)
    assert str(dtype).removeprefix("torch.") in note and "runs in float32" in note
    assert {p.dtype for p in loaded.network.parameters()} == {torch.float32}
    assert loaded.cast_from == (str(dtype).removeprefix("torch."),)
    assert model_pixels(loaded, torch.rand(1, 3, 4, 4), "cpu").dtype == torch.float32


def test_float64_weights_are_kept_and_take_float64_images():
    """They were cast to float32, rounding the weights (and breaking x = x.double())."""
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    weight = network[0].weight.detach().clone()
    loaded = _loaded(network)
    assert choose_precision(loaded, torch.device("cpu")) == ""
    assert loaded.network is network and torch.equal(network[0].weight, weight)
    pixels = torch.rand(1, 3, 4, 4)
    assert torch.equal(model_pixels(loaded, pixels, "cpu"), pixels.double())  # exact
    mps = _loaded(nn.Sequential(nn.Conv2d(3, 4, 3)).double())  # mps has no float64
    assert "runs in float32 (mps has no float64)" in choose_precision(mps, torch.device("mps"))
    assert {p.dtype for p in mps.network.parameters()} == {torch.float32}


def test_a_float32_model_with_integer_buffers_is_left_as_it_is():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # num_batches_tracked: int64
    loaded = _loaded(network)
    assert choose_precision(loaded) == ""
    assert loaded.network is network
    assert network[1].num_batches_tracked.dtype == torch.int64


def _failing(error):
    def forward(pixels):
        raise error

    return forward


def test_a_failure_at_another_size_is_the_size_advice_naming_width_by_height():
    loaded = _loaded(crop=224)
    pixels = torch.zeros(1, 3, 32, 48)
    for error in (RuntimeError("mat1 and mat2"), AssertionError("Input height (32)")):
        with pytest.raises(CLIError) as caught:
            model_logits(_failing(error), loaded, pixels, own_size=False)
        assert "mine:model cannot take 48x32 images" in str(caught.value)
        assert "--resize 256 --crop 224" in str(caught.value)


def test_a_failure_at_the_models_own_size_is_raised_as_it_is():
    with pytest.raises(RuntimeError, match="a bug"):
        model_logits(_failing(RuntimeError("a bug")), _loaded(), torch.zeros(1, 3, 8, 8), True)


def test_the_scores_keep_no_graph():
    linear = nn.Linear(12, 4)
    logits = model_logits(
        lambda pixels: linear(pixels.flatten(1)), _loaded(), torch.zeros(1, 3, 2, 2), True
    )
    assert logits.shape == (4,) and not logits.requires_grad


@pytest.mark.parametrize(
    ("output", "advice"),
    [
        (torch.zeros(2, 10), "not class indices nor a row"),
        (torch.zeros(1, 10, dtype=torch.long), "not class indices nor a row"),
        (torch.zeros(1, 10, 1, 1), "torch.flatten(out, 1)"),
    ],
)
def test_an_output_that_is_no_row_of_float_scores_is_refused(output, advice):
    with pytest.raises(CLIError, match="one row per image") as caught:
        scores_row(output, _loaded())
    assert advice in str(caught.value)
    assert f"shaped {tuple(output.shape)}" in str(caught.value)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (torch.float64, torch.float64),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_scores_keep_a_float64_models_type_and_half_precision_becomes_float32(given, kept):
    """A float64 model's scores were rounded to float32 (saved 1e-8 off its CTC scores' sum)."""
    row = scores_row(torch.arange(3, dtype=given)[None], _loaded())
    assert row.dtype == kept and row.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("scores", [[1.0, float("nan")], [float("inf"), 2.0, float("nan")]])
def test_scores_that_are_not_all_finite_name_the_bad_values(scores):
    with pytest.raises(CLIError, match="not finite for cat.png") as caught:
        check_finite_scores(torch.tensor(scores), _loaded(), "cat.png")
    bad = sorted({str(v) for v in scores if v != v or abs(v) == float("inf")})
    assert f"({', '.join(bad)})" in str(caught.value)


def test_the_size_advice_names_the_models_own_input_when_it_has_one():
    assert "--resize N --crop N" in size_advice(ImagePreprocessing())
    assert "(--resize 256 --crop 224)" in size_advice(ImagePreprocessing(resize=256, crop=224))


def test_the_own_size_is_the_crop_height_by_width():
    assert not is_own_size(ImagePreprocessing(), (224, 224))  # no crop: no size of its own
    own = ImagePreprocessing(resize=64, crop=(32, 48))
    assert is_own_size(own, (32, 48)) and not is_own_size(own, (48, 32))
    assert is_own_size(ImagePreprocessing(resize=64, crop=32), (32, 32))


def test_the_target_is_the_predicted_class_an_index_or_a_name():
    logits = torch.tensor([0.1, 3.0, -2.0, 0.5])
    loaded = _loaded(classes=["cat", "dog", "crane", "crane"])
    assert target_class(None, loaded, logits) == 1
    assert target_class("3", loaded, logits) == 3
    assert target_class("dog", loaded, logits) == 1
    with pytest.raises(CLIError, match=r"'crane' names 2 classes \(2, 3\)"):
        target_class("crane", loaded, logits)


@pytest.mark.parametrize("spec", ["4", "-5"])
def test_a_class_index_out_of_range_is_refused_with_the_range(spec):
    with pytest.raises(
        CLIError, match=rf"--target {spec} out of range: .* 4 classes \(0 to 3, or -4"
    ):
        target_class(spec, _loaded(), torch.zeros(4))


@pytest.mark.parametrize(("spec", "index"), [("-1", 3), ("-4", 0)])
def test_a_negative_index_counts_from_the_end_as_in_the_api(spec, index):
    assert target_class(spec, _loaded(), torch.zeros(4)) == index


def test_a_name_for_a_model_without_names_says_so():
    with pytest.raises(CLIError, match=r"'cat': give a class index \(0 to 3\); this model has no"):
        target_class("cat", _loaded(), torch.zeros(4))


@pytest.mark.parametrize("spec", ["²", "٣", "three", "--3", "-"])
def test_a_target_that_is_no_ascii_index_nor_a_name_is_refused(spec):
    with pytest.raises(CLIError, match="give a class index"):
        target_class(spec, _loaded(classes=["cat", "dog"]), torch.zeros(2))
