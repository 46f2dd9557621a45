"""Bad input gets a clear error, and a failed call leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError
from ctc_plugin.inputs import TrainingModeError
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition


def _state(model: nn.Module):
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]
    return hooks, torch._C._len_torch_function_stack()


@pytest.fixture
def setting():
    model = RandomCNN(CNNSpec(residual=True, concat=True, normalise=True), seed=1)
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    return model, x, mask


def _assert_untouched(model, x, before_output, before_state):
    assert _state(model) == before_state
    assert torch.equal(model(x), before_output)  # bit-identical forward after the failure


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, m: (x, m[..., :4]), "does not broadcast"),
        (lambda x, m: (x, m.float()), "integer feature ids"),
        (lambda x, m: (x, m - 5), "negative ids"),
        (lambda x, m: (x, m.bool()), "integer feature ids"),
        (lambda x, m: (x, (m, m)), "got 2 feature masks for 1 input;"),
        (lambda x, m: (x.masked_fill(x > 0.9, float("nan")), m), "NaN"),
        (lambda x, m: (x.long(), m), "floating-point"),
        (lambda x, m: (x, [m[0, 0] == 1, m[0, 0] == 1]), "overlaps"),
        (lambda x, m: (x, [m[0, 0] == 1, torch.zeros(8, 8, dtype=torch.bool)]), "empty"),
        # one image without its batch dimension, with a mask that does not broadcast to it
        (lambda x, m: (x[0], m), r"more dimensions .*x\.unsqueeze\(0\)"),
    ],
)
def test_bad_masks_and_inputs_are_clear_errors(setting, change, message):
    model, x, mask = setting
    before = model(x), _state(model)
    bad_x, bad_mask = change(x, mask)
    with pytest.raises(ValueError, match=message):
        CTC(model).attribute(bad_x, target=0, feature_mask=bad_mask)
    _assert_untouched(model, x, *before)


@pytest.mark.parametrize("target", [4, -7, [0], (0, 1), torch.tensor([0, 1, 2])])
def test_bad_targets_are_clear_errors(setting, target):
    model, x, mask = setting
    before = model(x), _state(model)
    with pytest.raises(ValueError, match="target"):
        CTC(model).attribute(x, target=target, feature_mask=mask)
    _assert_untouched(model, x, *before)


class _Quotient(nn.Module):
    """1 / h as the model's output: a gate-only tensor of the full pass, not the signal."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        h = self.conv(x)
        h = 1 / h
        return self.head(h.mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.exp(self.conv(x))


class _Nested(nn.Module):
    """An operation without a rule deep inside a module tree."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(nn.Identity(), nn.Sequential(_Block()))
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.head(self.stages(x).flatten(1))


class _SoftmaxAsSignal(nn.Module):
    """A softmax (a gate of the full pass) added to the signal: a gate-only output, refused."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.head((x + x.softmax(dim=-1)).flatten(1))


class _CopiesOffDimZero(nn.Module):
    """Applies a ReLU to a transposed map: the copies along dim 1, where no rule runs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.head(torch.softmax(x.flatten(1).t(), 1).t())


class _Rounding(nn.Module):
    """Rounds the signal in a way that looks linear: a quotient with a rounding mode, a
    conversion to an integer dtype and back."""

    def __init__(self, rounding: str) -> None:
        super().__init__()
        self.rounding = rounding
        self.conv = nn.Conv2d(3, 2, 3)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)) * 10
        if self.rounding == "floor":
            h = h.div(2, rounding_mode="floor")
        elif self.rounding == "trunc":
            h = torch.div(h, 2, rounding_mode="trunc")
        elif self.rounding == "int":
            h = h.to(torch.int32).float()
        else:
            h = h.type_as(torch.zeros(1, dtype=torch.long)).to(x.dtype)
        return self.head(h.mean(dim=(2, 3)))


class _Einsum(nn.Module):
    """A channel mixing written with einsum, its batch index hidden in an ellipsis or moved."""

    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation = equation
        self.weight = nn.Parameter(torch.randn(3, 2))
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(torch.einsum(self.equation, x.mean((2, 3)), self.weight).reshape(-1, 2))


@pytest.mark.parametrize(
    ("model", "operation"),
    [
        (
            _Einsum("...c,cd->...d"),
            r"einsum.*'...c,cd->...d' starts with an ellipsis \('...'\), which hides the copies' "
            r"index",
        ),
        (_Einsum("bc,cd->db"), r"einsum.*the copies' index 'b' of operand 0 does not lead the"),
        (_Rounding("floor"), r"torch.Tensor.div .*rounds the quotient \(rounding_mode='floor'\)"),
        (_Rounding("trunc"), r"torch.div .*rounds the quotient \(rounding_mode='trunc'\)"),
        (_Rounding("int"), r"torch.Tensor.to .*converts the signal to torch.int32"),
        (_Rounding("type_as"), r"torch.Tensor.type_as .*converts the signal to torch.int64"),
        (
            _Quotient(),
            r"torch.Tensor.__rdiv__ in the model \(_Quotient\): the model's output is computed "
            r"from its output \(last through torch.nn.functional.linear\)",
        ),
        (_Nested(), r"torch.exp in stages.1.0 \(_Block\): no CTC rule"),
        (
            _SoftmaxAsSignal(),
            r"torch.Tensor.add \(the signal and torch.Tensor.softmax\) in the model "
            r"\(_SoftmaxAsSignal\): the model's output is computed from its output.*only scales "
            r"the signal",
        ),
        (
            _CopiesOffDimZero(),
            r"softmax in the model \(_CopiesOffDimZero\): its input holds the copies along dim 1",
        ),
    ],
)
def test_unsupported_operations_are_named(model, operation):
    model.eval()
    x = torch.rand(2, 3, 8, 8)
    before = model(x), _state(model)
    with pytest.raises(UnsupportedOperationError, match=operation):
        CTC(model).attribute(x, target=0, feature_mask=random_partition(8, 8, 3))
    _assert_untouched(model, x, *before)


def test_training_mode_batch_norm_is_refused_without_touching_statistics():
    model = RandomCNN(CNNSpec(batch_norm=True), seed=2).train()
    x = torch.rand(2, 3, 8, 8)
    stats = [b.clone() for b in model.buffers()]
    with pytest.raises(TrainingModeError, match="model.eval"):
        CTC(model).attribute(x, target=0, feature_mask=random_partition(8, 8, 3))
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("wrap", ["lambda", "partial"])
def test_training_mode_behind_a_forward_function_is_refused_without_touching_the_model(wrap):
    """``check_eval_mode`` cannot see through a lambda; the pass refuses the module before its
    forward runs (BatchNorm counts a batch before its batch_norm call)."""
    import functools

    model = RandomCNN(CNNSpec(batch_norm=True), seed=2).train()
    x = torch.rand(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forward = (lambda t: model(t)) if wrap == "lambda" else functools.partial(model.forward)
    for mode in ("none", "proportional", "reference"):
        with pytest.raises(TrainingModeError, match="BatchNorm2d .*model.eval"):
            CTC(forward, bias_sharing=mode).attribute(
                x, target=0, feature_mask=random_partition(8, 8, 3)
            )
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not torch.nn.modules.module._global_forward_pre_hooks  # the pass's hook is gone


def test_bad_options_are_clear_errors(setting):
    model, x, mask = setting
    with pytest.raises(ValueError, match="bias_sharing"):
        CTC(model, bias_sharing="proportionate")
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        CTC(model, bias_sharing="proportional").attribute(
            x, target=0, feature_mask=mask, perturbations_per_eval=2
        )
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        CTC(model).attribute(x, target=0, feature_mask=mask, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="baseline"):
        CTC(model).attribute(x, target=0, feature_mask=mask, baselines=torch.zeros(5))


@pytest.mark.parametrize(
    ("second", "hint"),
    [
        ("reference", r"CTC\(model, bias_sharing='reference'\)"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.long), r"attribute\(x, target, feature_mask=mask\)"),
        ([torch.zeros(8, 8, dtype=torch.bool)], "feature_mask=mask"),
        (3, "a function of"),
    ],
)
def test_what_lands_where_the_segmenter_goes_is_refused_with_where_it_belongs(
    setting, second, hint
):
    model, _, _ = setting
    with pytest.raises(TypeError, match="second argument is the segmenter") as error:
        CTC(model, second)
    assert error.match(hint)
    CTC(model, lambda images: torch.zeros_like(images[:, :1], dtype=torch.long))  # a callable


def test_rows_of_features_without_a_mask_are_told_to_pass_one():
    model = nn.Sequential(nn.Linear(10, 3)).eval()
    x = torch.rand(4, 10)
    with pytest.raises(ValueError, match=r"rows of features \(N, F\)") as error:
        CTC(model).attribute(x, 0)
    hint = "feature_mask=torch.arange(x.shape[1]).unsqueeze(0)"
    assert hint in str(error.value)
    assert CTC(model).attribute(x, 0, feature_mask=torch.arange(10).unsqueeze(0)).shape == x.shape


@pytest.mark.parametrize("normalise", [False, True])
def test_one_image_without_its_batch_dimension_is_told_to_add_it(normalise):
    """An (H, W) mask broadcasts to one (C, H, W) image: the copies reach the model unbatched.

    Its first convolution (or the normalising constant before it) says how to add the batch
    dimension, and the model is left as it was.
    """
    model = RandomCNN(CNNSpec(normalise=normalise), seed=1)
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    before = model(x), _state(model)
    with pytest.raises((ValueError, UnsupportedOperationError)) as error:
        CTC(model).attribute(x[0], target=0, feature_mask=mask[0, 0])
    assert error.match(r"without its batch dimension, add it: x\.unsqueeze\(0\)")
    assert error.match("unbatched" if not normalise else "fewer dimensions")
    _assert_untouched(model, x, *before)


class _PerChannelShift(nn.Module):
    """``x - mean`` with a ``(C, 1, 1)`` buffer, as torchvision's transforms hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((3, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


@pytest.mark.parametrize("front", ["the package's Normalize", "a (C, 1, 1) constant"])
def test_one_image_without_its_batch_dimension_meets_a_normalisation_first(front):
    """The package's ``Normalize`` (every zoo model, ``ImagePreprocessing.wrap``) refused the
    copies' shape without the fix, and a ``(C, 1, 1)`` mean as many dimensions as the copies
    was refused as a constant that does not broadcast, without it either."""
    from ctc_plugin.images import Normalize

    first = Normalize() if front == "the package's Normalize" else _PerChannelShift()
    model = nn.Sequential(first, RandomCNN(CNNSpec(), seed=1)).eval()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises((ValueError, UnsupportedOperationError)) as error:
        CTC(model).attribute(x[0], target=0, feature_mask=random_partition(8, 8, 4)[0, 0])
    assert error.match(r"add the batch dimension: x\.unsqueeze\(0\)|add it: x\.unsqueeze\(0\)")


def test_a_per_channel_constant_meeting_unbatched_copies_is_told_first_to_add_the_batch():
    """A ``(C, 1, 1)`` mean meeting one image's copies, ``(copies, H, W)``, one row per copy:
    the hint opens with adding the batch dimension and says nothing of per-head biases, which
    only fit copies holding several rows each (the heads merged into the batch)."""
    model = nn.Sequential(_PerChannelShift(), RandomCNN(CNNSpec(), seed=1)).eval()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError) as error:
        CTC(model).attribute(x[0], target=0, feature_mask=random_partition(8, 8, 4)[0, 0])
    assert error.match(
        r"a constant of shape \(3, 1, 1\) that does not broadcast per example \(it meets the "
        r"copies, of shape \(\d+, 8, 8\), along their first dimension, where CTC stacks the "
        r"copies of every example: if the inputs are one example without its batch dimension, "
        r"add it: x\.unsqueeze\(0\)\. Otherwise it was sized for the model's own batch"
    )
    assert "heads" not in error.value.reason


@pytest.mark.parametrize("method", ["ctc", "integrative-cam"])
def test_inputs_of_another_dtype_than_the_model_are_named_with_the_fix(setting, method):
    from ctc_plugin import DtypeMismatchError, IntegrativeCAM

    model, x, mask = setting
    before = (model(x), _state(model))
    doubled = x.double()
    with pytest.raises(DtypeMismatchError) as caught:
        if method == "ctc":
            CTC(model).attribute(doubled, 1, feature_mask=mask)
        else:
            IntegrativeCAM(model).attribute(doubled, 1)
    message = str(caught.value)
    assert "the inputs are torch.float64 and the model computes in torch.float32" in message
    assert "x.to(torch.float32)" in message and "model.to(torch.float64)" in message
    assert isinstance(caught.value, RuntimeError)  # as torch's own error
    _assert_untouched(model, x, *before)


def test_other_runtime_errors_pass_unchanged(setting):
    model, x, mask = setting

    def failing(images):
        raise RuntimeError("expected scalar type of the moon")

    with pytest.raises(RuntimeError, match="^expected scalar type of the moon$"):
        CTC(failing).attribute(x.double(), 1, feature_mask=mask)  # no module: dtypes unknown


def test_the_packages_own_errors_are_not_taken_for_dtype_errors():
    """A float32 model that converts float64 inputs itself, refused for another reason."""

    class _Prototypes(nn.Module):  # "type" in its name, as in the refusal that names it
        def forward(self, h):
            return torch.cdist(h.flatten(1), h.flatten(1))

    model = nn.Sequential(_Prototypes()).eval()
    model.register_buffer("scale", torch.ones(1))  # float32: the model's dtype
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError, match="cdist in 0 \\(_Prototypes\\)"):
        CTC(model).attribute(x, 1, feature_mask=random_partition(4, 4, 2))


def test_a_log_softmax_head_is_told_to_explain_the_logits():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.LogSoftmax(dim=1)).eval()
    x = torch.rand(2, 3, 2, 2)
    with pytest.raises(UnsupportedOperationError, match="explain the logits before it"):
        CTC(model).attribute(x, 1, feature_mask=random_partition(2, 2, 2))


class _Between(nn.Module):
    """A convolution, ``body`` (a module, or a function of the map), pooling and a linear head."""

    def __init__(self, body) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.body, self.head = nn.Conv2d(3, 8, 3, padding=1), body, nn.Linear(8, 2)
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.conv(x)).mean(dim=(2, 3)))


def _refusal(forward, error=UnsupportedOperationError, mode="proportional") -> str:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error) as caught:
        CTC(forward, bias_sharing=mode).attribute(
            x, target=0, feature_mask=random_partition(8, 8, 3)
        )
    return str(caught.value)


@pytest.mark.parametrize("mode", ["none", "proportional"])
@pytest.mark.parametrize("behind", ["model", "lambda"])
def test_a_batch_norm_without_running_statistics_says_so_in_training_mode_too(mode, behind):
    """In training mode it was told to call model.eval(), then refused again in eval mode."""
    model = _Between(nn.BatchNorm2d(8, track_running_stats=False)).train()
    message = _refusal(model if behind == "model" else (lambda t: model(t)), mode=mode)
    where = "body (BatchNorm2d)" if behind == "model" else "a BatchNorm2d module"
    assert f"batch_norm in {where}: it has no running statistics" in message
    assert "track_running_stats=True" in message and "model.eval()" not in message


@pytest.mark.parametrize("mode", ["none", "proportional"])
def test_dropout_called_with_training_true_in_an_eval_model_says_eval_cannot_help(mode):
    model = _Between(lambda h: nn.functional.dropout(h, 0.3, training=True)).eval()
    message = _refusal(model, mode=mode)
    assert "dropout in the model (_Between): it is called with training=True" in message
    assert "training=self.training" in message and "call model.eval() first" not in message


class _OwnDropout(nn.Module):
    """Dropout as a module of the user's (no ``nn.Dropout``): random in training mode only."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(h, 0.3, training=self.training)


def test_dropout_of_a_module_in_training_mode_is_still_told_to_call_eval():
    message = _refusal(_Between(_OwnDropout()).train())
    assert "dropout in body (_OwnDropout): " in message and "call model.eval() first" in message


def test_a_functional_batch_norm_without_statistics_names_its_arguments_not_a_module_flag():
    model = _Between(lambda h: nn.functional.batch_norm(h, None, None, training=True)).eval()
    message = _refusal(model)
    assert "it is called without running statistics (running_mean and running_var None)" in message
    assert "track_running_stats" not in message


def test_a_functional_batch_norm_in_training_mode_in_an_eval_model_says_eval_cannot_help():
    model = _Between(None).eval()
    model.body = lambda h: nn.functional.batch_norm(h, model.mean, model.var, training=True)
    message = _refusal(model)
    assert "it is called with training=True" in message
    assert "model.eval() does not change it" in message and "call model.eval()" not in message


def test_a_softmax_inside_the_model_is_named_where_it_runs_and_not_called_the_output():
    """``nn.Softmax2d`` between two convolutions: the message said the output came out of it
    and to explain the logits before it, and named no module."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Softmax2d(), nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(model).attribute(x, target=0, feature_mask=random_partition(8, 8, 3))
    message, error = str(caught.value), caught.value
    assert "softmax in 1 (Softmax2d)" in message and error.module == "1 (Softmax2d)"
    assert "the layers after it read it" in message and "before the softmax" not in message
    assert not error.at_output


def test_a_final_softmax_is_named_where_it_runs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3), nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(model).attribute(x, target=0, feature_mask=random_partition(8, 8, 3))
    assert "softmax in 2 (Softmax): the model's output comes out of it" in str(caught.value)
    assert caught.value.at_output and "explain the logits before the softmax" in str(caught.value)


def test_a_threshold_is_named_by_its_public_name():
    message = _refusal(_Between(nn.Threshold(0.1, 0.0)).eval())
    assert "torch.nn.functional.threshold in body (Threshold)" in message


class Atan(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.atan(t)


def test_a_module_outside_the_model_takes_an_before_a_vowel():
    atan = Atan()
    message = _refusal(lambda t: atan(t).mean(dim=(1, 2, 3)).unsqueeze(1))
    assert "torch.atan in an Atan module" in message
