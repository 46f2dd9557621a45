"""The methods given ``torch.compile(model)``, ``model.compile()`` or ``nn.DataParallel(model)``.

Captum users often hold their model compiled or wrapped for several GPUs. On this machine's one
device ``DataParallel`` calls the model it holds, and a compiled model computes what the model
it compiles computes; the methods' messages name the model's own module paths, not torch's
wrapper level (``_orig_mod.``, ``module.``).

Compiling is slow on a CPU: the compiled models here use the ``"eager"`` backend (dynamo traces
them, nothing is generated), which shows every effect of tracing without a compiler.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM, TrainingModeError, UnsupportedOperationError
from ctc_plugin.images import ImagePreprocessing
from ctc_plugin.module_paths import module_path, path_as_given
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

WRAPPERS = {
    "torch.compile": lambda model: torch.compile(model, backend="eager"),
    "DataParallel": nn.DataParallel,
}


@pytest.fixture(autouse=True)
def _dynamo_afresh():
    """Each test compiles afresh: dynamo caches per code object (every ``RandomCNN.forward``),
    and after its recompile limit it runs that code uncompiled, counting nothing."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model() -> RandomCNN:
    return RandomCNN(CNNSpec(residual=True), seed=0)


class Atan(nn.Module):
    """``torch.atan``, which CTC has no rule for: it refuses the call, naming the module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The arc tangent."""
        return torch.atan(x)


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
@pytest.mark.parametrize("method", [CTC, IntegrativeCAM])
def test_the_eval_mode_check_names_the_models_own_path_inside_a_wrapper(wrap, method):
    """It named ``'_orig_mod.blocks.0.norm'`` and ``'module.blocks.0.norm'``."""
    model = _model()
    model.blocks[0].norm.train()
    mask = random_partition(8, 8, 3)
    with pytest.raises(TrainingModeError) as caught:
        arguments = {"feature_mask": mask} if method is CTC else {}
        method(wrap(model)).attribute(torch.rand(1, 3, 8, 8), 0, **arguments)
    message = str(caught.value)
    assert "'blocks.0.norm'" in message, message


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
def test_a_ctc_refusal_names_the_models_own_path_inside_a_wrapper(wrap):
    """It named ``in _orig_mod.blocks.1.act (Atan)``, ``in module.blocks.1.act``."""
    model = _model()
    model.blocks[1].act = Atan()
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(wrap(model)).attribute(
            torch.rand(1, 3, 8, 8), 0, feature_mask=random_partition(8, 8, 3)
        )
    message = str(caught.value)
    assert "in blocks.1.act (Atan)" in message, message


def test_paths_leave_out_torch_wrappers_wherever_they_sit():
    model = _model()
    block = model.blocks[0]
    model.blocks[0] = torch.compile(block, backend="eager")  # a submodule compiled
    assert module_path(model, block.conv) == "blocks.0.conv"
    assert module_path(model, block) == "blocks.0"
    parallel = nn.DataParallel(model)
    assert module_path(parallel, block.norm) == "blocks.0.norm"
    assert (
        path_as_given(parallel, "module.blocks.0._orig_mod.conv.weight") == "blocks.0.conv.weight"
    )
    assert path_as_given(parallel, "module") == ""
    normalised = ImagePreprocessing(mean=(0.5,) * 3, std=(0.2,) * 3).wrap(parallel)
    assert module_path(normalised, block.conv) == "blocks.0.conv"
    assert module_path(normalised, normalised[0]) == "(input step)"
    outside = nn.DataParallel(normalised)  # the normalisation inside a wrapper too
    assert path_as_given(outside, "module.1.module.head.bias") == "head.bias"
    assert path_as_given(outside, "module.0") == "(input step)"
    assert path_as_given(model, "blocks.0._orig_mod") == "blocks.0"
    assert path_as_given(model, "not.a.path") == "not.a.path"


class Compiles:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them as traced."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        """Count one compilation; run the graph as it is."""
        self.count += 1
        return graph.forward


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )  # fmt: skip


def _explainer() -> object:
    from ctc_plugin import Explainer
    from ctc_plugin.explainer.backbones import build_backbone

    torch.manual_seed(0)
    return Explainer(build_backbone("unet-small", 4, width=2), 4)


def _attributor(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from ctc_plugin import CTCAttributor

    with CTCAttributor(model, feature_mask=random_partition(8, 8, 4, seed=1)) as attributor:
        return attributor(x, torch.eye(4)[[1]])[1]


def _ctc(mode: str) -> object:
    mask = random_partition(8, 8, 4, seed=1)
    return lambda model, x: CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)


def _relevance(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from zennit.composites import EpsilonPlusFlat

    from ctc_plugin.features.relevance import relevance_heatmap, zennit_relevance

    return torch.stack(
        [zennit_relevance(model, x, 1), relevance_heatmap(EpsilonPlusFlat(), model, x, None)]
    )


def _explainer_attribution(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from ctc_plugin import ExplainerAttribution

    explanation = ExplainerAttribution(model, _explainer(), check_classifier=False)
    with pytest.warns(UserWarning, match="has not been trained"):
        return explanation.attribute(x, None)


CALLS = {
    "CTC proportional": _ctc("proportional"),
    "CTC reference": _ctc("reference"),
    "CTC none": _ctc("none"),
    "CTCAttributor": _attributor,
    "IntegrativeCAM": lambda model, x: IntegrativeCAM(model).attribute(x, 1),
    "relevance": _relevance,
    "ExplainerAttribution": _explainer_attribution,
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_a_compiled_model_is_explained_as_its_model_with_no_compilation_and_no_warning(call):
    """``torch.compile(model)`` warned of the methods' global hooks (naming the package's
    files), Integrative CAM and the Zennit routes had dynamo trace their hooks (compiling again
    and again, warning of ``lru_cache`` in ``cam/layers.py``). Each method now explains the
    compiled model's own model: its numbers, nothing compiled, and the compiled model is left
    as it was (no hook; it runs the graph compiled before the call)."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model, backend = _model(), Compiles()
    compiled = torch.compile(model, backend=backend)
    before = compiled(x)
    assert backend.count == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = call(compiled, x)
    assert [str(w.message) for w in caught] == []
    assert backend.count == 1  # nothing traced or compiled during the call
    torch.testing.assert_close(got, call(_model(), x), rtol=0, atol=0)
    assert _hooks(compiled) == 0 and compiled._orig_mod is model
    assert torch.equal(compiled(x), before) and backend.count == 1  # no recompilation


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_a_data_parallel_model_is_explained_as_the_model_it_holds(call):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _model()
    parallel = nn.DataParallel(model)
    torch.testing.assert_close(call(parallel, x), call(_model(), x), rtol=0, atol=0)
    assert _hooks(parallel) == 0 and parallel.module is model


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
def test_the_methods_hold_the_model_inside_a_wrapper(wrap):
    """On several GPUs ``DataParallel`` runs copies of the model in other threads, outside the
    methods' tracing (a torch function mode is per thread): each method holds the model
    inside, which runs in the calling thread."""
    from ctc_plugin import CTCAttributor, ExplainerAttribution

    model = _model()
    assert CTC(wrap(model)).forward_func is model
    assert IntegrativeCAM(wrap(model)).forward_func is model
    assert CTCAttributor(wrap(model)).model is model
    explainer = _explainer()
    explanation = ExplainerAttribution(wrap(model), wrap(explainer))
    assert explanation.forward_func is model and explanation.explainer is explainer


def test_fitting_an_explainer_to_a_compiled_classifier_fits_it_to_the_classifier():
    """The classifier ran compiled, with dynamo tracing the training-mode guard (a global
    hook: torch warned about it, naming the package's file)."""
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = [(images[:4], torch.tensor([0, 1, 2, 3])), (images[4:], torch.tensor([3, 2, 1, 0]))]
    backend = Compiles()
    fitted = []
    for classifier in (torch.compile(_model(), backend=backend), _model()):
        explainer = _explainer()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            explainer.fit(classifier, batches, epochs=1, seed=0, show_progress=False)
        assert [str(w.message) for w in caught] == []
        fitted.append(explainer.state_dict())
    assert backend.count == 0
    assert all(torch.equal(fitted[0][k], fitted[1][k]) for k in fitted[1])


def _compiled_in_place(model: nn.Module, backend: Compiles) -> nn.Module:
    model.compile(backend=backend)
    return model


def _block_compiled(model: nn.Module, backend: Compiles) -> nn.Module:
    model.blocks[0] = torch.compile(model.blocks[0], backend=backend)
    return model


IN_PLACE = {"model.compile()": _compiled_in_place, "a compiled block": _block_compiled}


def _warning(caught: warnings.WarningMessage) -> str:
    return f"{caught.filename}:{caught.lineno}: {caught.message}"


def _torchs_own(caught: warnings.WarningMessage, compile_: object) -> bool:
    """torch's note that global hooks fire again for a compiled block's wrapper, said in
    torch's code that calls the block (the methods' global hooks are harmless there)."""
    return (
        compile_ is _block_compiled
        and str(caught.message).startswith("Using `torch.compile(module)` when there are global")
        and "ctc_plugin" not in caught.filename
    )


@pytest.mark.parametrize("compile_", IN_PLACE.values(), ids=IN_PLACE)
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_a_model_compiled_in_place_runs_its_python_code_in_every_method(call, compile_):
    """A model compiled in place (or with a compiled block) cannot be unwrapped: CTC's pass ran
    its Python code, but Integrative CAM and the Zennit routes had dynamo trace their hooks,
    compiling 11 to 21 times a call (warning of ``lru_cache`` in ``cam/layers.py`` and of
    ``_thread.get_ident`` in the Explainer's guard). Every method now runs its compiled code as
    Python code: the model's numbers, nothing compiled, the compiled code kept for later."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    backend = Compiles()
    model = compile_(_model(), backend)
    before = model(x)
    assert backend.count == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = call(model, x)
    assert [_warning(w) for w in caught if not _torchs_own(w, compile_)] == []
    assert backend.count == 1
    torch.testing.assert_close(got, call(_model(), x), rtol=0, atol=0)
    assert _hooks(model) == 0
    assert torch.equal(model(x), before) and backend.count == 1


@pytest.mark.parametrize("compile_", IN_PLACE.values(), ids=IN_PLACE)
def test_fitting_an_explainer_runs_a_classifier_compiled_in_place_as_its_python_code(compile_):
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = [(images[:4], torch.tensor([0, 1, 2, 3])), (images[4:], torch.tensor([3, 2, 1, 0]))]
    backend = Compiles()
    fitted = []
    for classifier in (compile_(_model(), backend), _model()):
        explainer = _explainer()
        explainer.fit(classifier, batches, epochs=1, seed=0, show_progress=False)
        fitted.append(explainer.state_dict())  # the classifier's digest too
    assert backend.count == 0
    assert all(torch.equal(fitted[0][k], fitted[1][k]) for k in fitted[1])


def test_a_compiled_or_wrapped_part_leaves_the_weights_digest_as_it_is():
    """An explainer fitted to a model with a compiled block recorded the digest of keys such as
    ``blocks.0._orig_mod.conv.weight``: explaining the same model uncompiled then warned that
    the classifier had other weights (and the other way round)."""
    from ctc_plugin.module_state import state_digest

    bare = state_digest(_model())
    model = _model()
    model.blocks[0] = torch.compile(model.blocks[0], backend="eager")
    assert state_digest(model) == bare
    model.blocks[1] = nn.DataParallel(model.blocks[1])
    assert state_digest(nn.DataParallel(model)) == bare
    step = ImagePreprocessing(mean=(0.5,) * 3, std=(0.2,) * 3)
    normalised = nn.Sequential(step.wrap(_model())[0], _model())  # a WrappedModel's own keys
    assert state_digest(step.wrap(model)) == state_digest(normalised) != bare
