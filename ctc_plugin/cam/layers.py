"""Find the feature maps Integrative CAM explains, during the model's own forward pass.

A [`StageTracer`][ctc_plugin.cam.layers.StageTracer] is a `torch.overrides.TorchFunctionMode`: it
sees every torch function the forward pass calls, functional ones included (``F.relu`` in a
``forward`` method is as visible as an ``nn.ReLU`` module). It groups the calls into *stages*:

- a 2-D convolution starts a stage; a BatchNorm that is the first consumer of the stage's output
  is folded into it; a ReLU that is the next consumer ends it. The stage's feature map ``A`` is
  the last tensor of that chain (post-activation where there is a ReLU), and its bias is the
  convolution's bias with the BatchNorm folded in. Where the map before the ReLU is read again
  afterwards (NASNet's and PNASNet's cells give each branch its own ReLU of one map), the ReLU
  leaves the stage: its map is the one all the branches read, as it is where the other reader
  comes first;
- a BatchNorm that does not directly follow a convolution starts a stage of its own;
- chains whose maps are 1x1 (squeeze-and-excitation convolutions) are not stages: after min-max
  normalisation such a map is constant and carries no location.

With explicit layers, each call of a chosen module is a stage whose feature map is the module's
output; its bias is that of the chain ending in that output, if any. A module that runs more
than once (torchvision's BasicBlock calls its ``relu`` twice) gives a stage per call, all fused,
where Captum's layer methods explain its last call and pytorch-grad-cam's its first; Integrative
CAM warns of it.

No tensor is cloned. The tracer keeps a reference to each stage's tensor and watches in-place
operations: before an in-place call overwrites a stage's tensor (``out += identity``, an in-place
ReLU after an explicitly chosen conv), it copies the value; the gradient hook registered earlier
on the tensor still receives the gradient of that earlier version. A modification it cannot see
(through a view) is detected by the tensor's version counter and reported as an error, never used.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from ctc_plugin.batchnorm import BATCH_NORM_TYPES, batch_norm_affine
from ctc_plugin.cam.attention_reach import AttentionReach
from ctc_plugin.cam.bias import fold_batchnorm
from ctc_plugin.cam.reshapes import TupleOutput, at_call
from ctc_plugin.inputs import FUNCTIONAL_DROPOUTS, RANDOM_FUNCTIONS, TrainingModeError
from ctc_plugin.module_paths import named_modules_as_given
from ctc_plugin.wording import counted

#: What to do about a BatchNorm without running statistics, in every refusal of one.
RUNNING_STATISTICS = (
    "give it running statistics (track_running_stats=True, estimated on training data)"
)


class BatchNormBiasError(TrainingModeError):
    """A BatchNorm without running statistics in a stage whose bias ``bias=True`` folds.

    It normalises with the batch's statistics, so its shift is no constant bias term. The
    message says to pass ``bias=False`` (or to give it running statistics); ``reason`` is the
    message without that advice, for callers that offer other ways out (the command line, which
    has no ``bias`` option).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor")
) | {"__setitem__"}
#: Calls that read metadata or register hooks: they neither consume nor modify a tensor.
_NEUTRAL = frozenset(
    {
        "__get__", "dim", "size", "numel", "register_hook", "retain_grad", "is_contiguous",
        "stride", "__len__",
    }
)  # fmt: skip
#: Calls that copy or convert a tensor without computing on it (a recording hook's
#: ``output.cpu().detach()``): their result reads the map as it does.
_COPIES = frozenset(
    {"cpu", "cuda", "to", "clone", "contiguous", "float", "double", "half", "bfloat16", "type_as"}
)


@dataclass(eq=False)
class Stage:
    """One feature map to explain, with what the backward pass needs to know about it.

    Attributes:
        index: Position in forward order.
        name: The module name (qualified, from ``named_modules``) or a generated label.
        steps: The operations of the chain, e.g. ``("conv", "bn", "relu")``.
        tensor: The feature map as the model produced it (released once used).
        version: ``tensor._version`` when the stage last changed.
        bias: The stage's per-channel bias (BatchNorm folded), or None.
        relu: Whether a ReLU lies between the biased pre-activation and ``tensor``.
        extendable: Whether a following BatchNorm or ReLU may still join the chain.
        snapshot: A copy taken before an in-place operation overwrote ``tensor``.
        handle: The gradient hook on ``tensor``.
        reshape: Turns ``tensor`` and its gradient into an (N, C, H, W) map (a transformer
            block's token map), or None when ``tensor`` is one.
        without_grad: Whether the stage was computed with gradients off (under
            ``torch.no_grad()`` inside the model, or in reentrant ``torch.utils.checkpoint``):
            no gradient hook can reach it.
    """

    index: int
    name: str
    steps: tuple[str, ...]
    tensor: Tensor | None
    version: int
    bias: Tensor | None = None
    relu: bool = False
    extendable: bool = True
    snapshot: Tensor | None = None
    handle: RemovableHandle | None = field(default=None, repr=False)
    reshape: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    without_grad: bool = False

    def value(self) -> Tensor:
        """Return the feature map's value as it was when the stage was recorded.

        Raises:
            RuntimeError: If the tensor was modified in place in a way the tracer could not see.
        """
        if self.snapshot is not None:
            return self.shaped(self.snapshot)
        if self.tensor is None:
            raise RuntimeError(f"stage {self.name!r} was already released")
        if self.tensor._version != self.version:
            raise RuntimeError(
                f"the output of {self.name!r} was modified in place (through a view) after it "
                "was recorded, so its value is no longer available; choose another layer, or "
                "make that operation out-of-place"
            )
        return self.shaped(self.tensor)

    def shaped(self, tensor: Tensor) -> Tensor:
        """``tensor`` (the stage's output or its gradient) as an (N, C, H, W) map."""
        return tensor if self.reshape is None else self.reshape(tensor)

    def release(self) -> None:
        """Drop the references to the feature map and its gradient hook."""
        if self.handle is not None:
            self.handle.remove()
        self.tensor = self.snapshot = self.handle = None


@functools.cache
def _inplace_position(func: Callable[..., Any]) -> int | None:
    """Return the position of a function's ``inplace`` parameter, or None."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def _is_inplace(func: Callable[..., Any], name: str, args: tuple, kwargs: dict) -> bool:
    if name.endswith("_") and not name.endswith("__"):
        return True
    if name in _INPLACE_DUNDERS or "out" in kwargs or kwargs.get("inplace") is True:
        return True
    position = _inplace_position(func)
    return position is not None and len(args) > position and args[position] is True


_ATTENTION = frozenset({F.scaled_dot_product_attention, F.multi_head_attention_forward})


def _attention_scores(args: tuple) -> bool:
    """Whether a softmax's input looks like attention scores (..., tokens, tokens)."""
    scores = args[0] if args and isinstance(args[0], Tensor) else None
    return scores is not None and scores.dim() >= 3 and scores.shape[-1] == scores.shape[-2] > 1


def computes_attention(func: Callable[..., Any], args: tuple) -> bool:
    """Whether the torch function ``func`` called with ``args`` computes attention.

    ``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward`` (what
    ``nn.MultiheadAttention`` calls), or a softmax of scores shaped (..., tokens, tokens).
    """
    return func in _ATTENTION or (
        getattr(func, "__name__", "") == "softmax" and _attention_scores(args)
    )


_DROPOUT = frozenset(FUNCTIONAL_DROPOUTS)


@functools.cache
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def _refuse_training_dropout(
    func: Callable[..., Any], name: str, args: tuple, kwargs: dict
) -> None:
    """Refuse a dropout call that drops units (training mode, ``p > 0``): the map would be random.

    Raises:
        TrainingModeError: Before the call runs.
    """
    bound = _signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    if bound.arguments["training"] and bound.arguments["p"] > 0:
        raise TrainingModeError(
            f"{name} runs with training=True (p={bound.arguments['p']}): it drops units at "
            "random, so the map would change from call to call; call model.eval() first, or, "
            "where the forward passes training=True itself (model.eval() does not change that), "
            "pass training=self.training as torch's modules do"
        )


def _tensors(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, Tensor))


_BATCHNORM_PARAMETERS = (
    "input",
    "running_mean",
    "running_var",
    "weight",
    "bias",
    "training",
    "momentum",
    "eps",
)
_BATCHNORM_DEFAULTS = {
    "weight": None,
    "bias": None,
    "training": False,
    "momentum": 0.1,
    "eps": 1e-5,
}


def _batchnorm_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """Name the arguments of an ``F.batch_norm`` call (cheaper than ``inspect.bind``)."""
    return {**_BATCHNORM_DEFAULTS, **dict(zip(_BATCHNORM_PARAMETERS, args)), **kwargs}


class StageTracer(TorchFunctionMode):
    """Record the stages of one forward pass and hook their gradients.

    Args:
        on_grad: Called as ``on_grad(stage, grad)`` when a stage's gradient arrives.
        discover: Make every convolution chain a stage (``layers=None``). When False, chains are
            still followed (for their biases) but only
            [`add_layer_output`][ctc_plugin.cam.layers.StageTracer.add_layer_output] adds stages.
        fold_bias: Fold BatchNorm statistics into biases; a BatchNorm without running
            statistics is then an error.
        names: Module names by ``id`` of their weight or running-mean tensor, and of each
            ``nn.Conv2d`` module (for a convolution whose weight is made at every call: see
            `running_convs`).
        image_size: The input's (H, W): a chosen layer's 4-D output that, without a reshape,
            looks channels-last for it (`looks_channels_last`) is refused, unless its last two
            dims are the grid of a convolution's output (a map of that convolution's kind).
        examples: How many examples the call explains: a BatchNorm without running statistics
            is refused on several (it mixes them), not on one image's rows (LeViT's tokens),
            and a stage's map without one row per example is refused; None: one, and the
            stages' rows are not checked.
        refuse_point_maps: Refuse a layer output whose map is 1 x 1 (the user's own layers;
            a found block's is kept: its map is 0 and changes no fused map).

    A BatchNorm in training mode with running statistics, and a dropout that drops units, are
    errors (``TrainingModeError``) raised before they run, with or without ``fold_bias``: the
    statistics would be updated (the model would change) or the map would be random. This is
    the check for plain forward functions, whose modules cannot be inspected beforehand.
    """

    def __init__(
        self,
        on_grad: Callable[[Stage, Tensor], None],
        discover: bool,
        fold_bias: bool,
        names: dict[int, str] | None = None,
        image_size: tuple[int, int] | None = None,
        examples: int | None = None,
        refuse_point_maps: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.refuse_point_maps = refuse_point_maps
        #: The leaves behind the maps `_differentiable` copied: the backward pass must reach
        #: them, as a copy overwritten in place after its hook (``torch.relu_``) is no longer
        #: the version whose gradient the hook takes.
        self.roots: list[Tensor] = []
        self.examples = 1 if examples is None else examples
        self._rows = examples  # None: the stages' rows are not checked
        self.on_grad = on_grad
        self.discover = discover
        self.fold_bias = fold_bias
        self.names = names or {}
        #: The ``nn.Conv2d`` modules running now, innermost last (kept by module hooks of the
        #: caller's): a convolution whose weight is unknown by ``id`` (made at every call by a
        #: parametrization, pruning's or weight norm's pre-hook) is named by its module.
        self.running_convs: list[nn.Module] = []
        self.stages: list[Stage] = []
        self._chains: list[Stage] = []
        self._by_tensor: dict[int, list[Stage]] = {}
        #: Copies of stage tensors that only read them so far, by ``id``: (the copy, each stage
        #: with its steps when the copy was made).
        self._reads: dict[int, tuple[Tensor, list[tuple[Stage, tuple[str, ...]]]]] = {}
        #: Tensors a chain took a step past (a convolution's output its BatchNorm consumed), by
        #: ``id``: (the tensor, its stage, the steps up to it). A later use is refused.
        self._passed: dict[int, tuple[Tensor, Stage, tuple[str, ...]]] = {}
        self._counts: dict[str, int] = {}
        #: The chosen modules that ran, in call order.
        self.modules: list[nn.Module] = []
        #: The chains left out of the stages because their maps are 1x1 (``discover`` only).
        self.point_maps = 0
        #: The (H, W) of every 2-d convolution's output so far: grids a layer's map may have.
        self.conv_grids: set[tuple[int, int]] = set()
        #: Whether each attention's output reaches a stage (``discover`` only).
        self.reach = AttentionReach() if discover else None

    # -- bookkeeping -------------------------------------------------------------------------
    def _label(self, key: Tensor | None, kind: str) -> str:
        if key is not None and id(key) in self.names:
            return self.names[id(key)]
        module = self.running_convs[-1] if kind == "conv2d" and self.running_convs else None
        if module is not None and id(module) in self.names:
            return self.names[id(module)]
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return f"{kind}#{self._counts[kind]}"

    def _track(self, stage: Stage, tensor: Tensor) -> None:
        stage.tensor, stage.version = tensor, tensor._version
        self._by_tensor.setdefault(id(tensor), []).append(stage)

    def _untrack(self, stage: Stage) -> None:
        if stage.tensor is None:
            return
        group = self._by_tensor.get(id(stage.tensor), [])
        if stage in group:
            group.remove(stage)
        if not group:
            self._by_tensor.pop(id(stage.tensor), None)

    def _hook(self, stage: Stage) -> None:
        if stage.tensor is not None and stage.tensor.requires_grad:
            stage.handle = stage.tensor.register_hook(functools.partial(self.on_grad, stage))

    def _new_chain(self, out: Tensor, name: str, step: str, bias: Tensor) -> None:
        if not (self.discover or self.fold_bias):
            return  # chains only matter as stages or for the biases of chosen layers
        stage = Stage(index=len(self._chains), name=name, steps=(step,), tensor=None, version=0)
        stage.bias, stage.without_grad = bias, not torch.is_grad_enabled()
        self._track(stage, out)
        self._chains.append(stage)
        if self.discover and out.shape[-2] * out.shape[-1] > 1:  # a 1x1 map has no "where"
            self._check_rows(name, out.shape[0])
            stage.index = len(self.stages)
            self.stages.append(stage)
        elif self.discover:
            self.point_maps += 1

    def _extend(self, stage: Stage, out: Tensor, step: str) -> None:
        if stage.tensor is not None and stage.tensor is not out:
            self._passed[id(stage.tensor)] = (stage.tensor, stage, stage.steps)
        self._untrack(stage)
        self._track(stage, out)
        stage.steps = (*stage.steps, step)
        if step == "relu":
            stage.relu = True
            stage.extendable = False

    def _alias(self, tensor: Tensor, alias: Tensor) -> None:
        """Move the stages that end at ``tensor`` to ``alias``, a view of all of it.

        ``x.view_as(x)`` is how autograd hands back a tensor that a custom function returns
        unchanged: a module with a full backward hook (``register_full_backward_hook``, of the
        module or global) passes its inputs and output through such a function. The next
        BatchNorm or ReLU of the chain, and a chosen layer's map, then take the alias; without
        the move the stage ended at the hook and its BatchNorm and ReLU became a stage of their
        own (another map, another fused map).
        """
        for stage in list(self._by_tensor.get(id(tensor), [])):
            self._untrack(stage)
            self._track(stage, alias)

    def enter_module(self, module: nn.Module, args: Any) -> None:
        """Global forward pre-hook: note a ``nn.Conv2d`` that starts (`running_convs`)."""
        if isinstance(module, nn.Conv2d):
            self.running_convs.append(module)

    def leave_module(self, module: nn.Module, args: Any, output: Any) -> None:
        """Global forward hook: forget a ``nn.Conv2d`` that ended (`running_convs`)."""
        if isinstance(module, nn.Conv2d) and self.running_convs:
            self.running_convs.pop()

    def _check_rows(self, name: str, rows: int) -> None:
        """Refuse a stage's map without one row per example (``examples``, where given).

        Raises:
            ValueError: Naming the stage, where the model runs it on part of the batch (a
                loop over the images) or it is a tensor of the model's own (a learned prior).
        """
        if self._rows is not None and rows != self._rows:
            raise ValueError(
                f"the map of {name!r} has {counted(rows, 'row')} for "
                f"{counted(self.examples, 'example')}: the model runs it on part of the batch "
                "(a loop over the images), or it is a tensor of the model's own, so it is no "
                "map per example; explain one image at a time (a batch of 1), or choose "
                "layers=[modules that take the whole batch]"
            )

    def in_chain(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is the end of a traced convolution chain (a stage with its bias)."""
        return any(stage in self._chains for stage in self._by_tensor.get(id(tensor), []))

    def add_layer_output(
        self,
        name: str,
        output: Any,
        module: nn.Module | None = None,
        reshape: Callable[[Tensor], Tensor] | TupleOutput | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Tensor | None:
        """Make the output of a chosen module a stage (called from a module forward hook).

        Args:
            name: The stage's name.
            output: The module's output.
            module: The module, recorded in [`modules`][ctc_plugin.cam.layers.StageTracer.modules].
            reshape: Turns the output (and its gradient) into an (N, C, H, W) map, as
                pytorch-grad-cam's ``reshape_transform`` does; None: the output is one. A
                `ctc_plugin.cam.TupleOutput` first picks the tensor out of a tuple
                the module returns: that tensor is the stage (its gradient is hooked), reshaped
                as the TupleOutput says.
            arguments: The module's call arguments by name, where a `TupleOutput` reads the
                grid of its tokens from them (``grid_arguments``).

        Returns:
            The output the hook returns in place of the module's, or None to keep it: a tensor
            without gradient while gradients are on (a frozen layer on a cut input) is replaced
            by a copy that requires grad (`_differentiable`), no leaf, so an in-place operation
            after the layer still works and a tensor of the model's own keeps its flag; a
            tensor picked from a tuple is replaced so in the tuple (a list, a named tuple).

        Raises:
            ValueError: If the output (picked, reshaped) is not a 4-D tensor (N, C, H, W), is
                1 x 1 with ``refuse_point_maps`` (a global pooling's: it shows no location), or,
                without a reshape, looks channels-last (N, H, W, C) for ``image_size``.
        """
        picked = isinstance(reshape, TupleOutput)
        whole, item = output, reshape.item if picked else None
        if picked:
            try:
                output, reshape = reshape.select(output, arguments)
            except ValueError as error:
                raise ValueError(f"layer {name!r}: {error}") from error
        if not isinstance(output, Tensor):
            raise ValueError(
                f"layer {name!r} returned a {type(output).__name__}, not a tensor; IntegrativeCAM "
                "explains the tensor a layer returns (a reshape_transform receives that tensor "
                "and its gradient): choose the submodule that computes the feature map, or, for "
                "a tuple, pass reshape_transform=ctc_plugin.cam.TupleOutput(item, "
                "reshape) naming the tensor to explain"
            )
        if reshape is not None:
            reshape = at_call(reshape, output)  # on the patch grid of this call
        try:
            shaped = output if reshape is None else reshape(output)
        except (RuntimeError, IndexError, TypeError) as error:  # torch's, from a user's reshape
            raise ValueError(
                f"the reshape_transform failed on the output of layer {name!r}, shaped "
                f"{tuple(output.shape)}: {error}; give one that maps it to (N, C, H, W)"
            ) from error
        if not isinstance(shaped, Tensor) or shaped.dim() != 4:
            shape = tuple(shaped.shape) if isinstance(shaped, Tensor) else type(shaped).__name__
            if reshape is not None:
                raise ValueError(
                    f"the reshape_transform returned {shape} for the output of layer {name!r}, "
                    f"shaped {tuple(output.shape)}; IntegrativeCAM needs a 4-D feature map "
                    "(N, C, H, W) from each layer: give a reshape_transform that returns one"
                )
            raise ValueError(
                f"layer {name!r} returned {shape}; IntegrativeCAM needs a 4-D feature map "
                "(N, C, H, W) from each layer: give a reshape_transform for token maps "
                "(N, T, D) or channels-last maps"
            )
        self._check_rows(name, shaped.shape[0])
        grid = (int(shaped.shape[-2]), int(shaped.shape[-1]))
        if grid == (1, 1) and self.refuse_point_maps:  # alone, the fused map would be 0
            raise ValueError(
                f"layer {name!r} returned a 1 x 1 map {tuple(shaped.shape)}, which shows no "
                "location (min-max normalisation makes it 0): choose a layer before the "
                "pooling, whose (N, C, H, W) map is larger than 1 x 1"
            )
        if reshape is None and self.image_size is not None and grid not in self.conv_grids:
            self._refuse_channels_last_output(name, shaped, self.image_size)
        if module is not None:
            self.modules.append(module)
        replaced = None
        copy = self._differentiable(output)  # a frozen layer on a cut input
        if copy is not output:
            output = replaced = copy
            if picked:  # the tuple with the copy at its item
                replaced = _with_item(whole, item, output)
        chain = next((s for s in self._by_tensor.get(id(output), []) if s in self._chains), None)
        stage = Stage(index=len(self.stages), name=name, steps=("layer",), tensor=None, version=0)
        stage.extendable, stage.without_grad = False, not torch.is_grad_enabled()
        stage.reshape = reshape
        if chain is not None and chain.version == output._version:
            stage.bias, stage.relu = chain.bias, chain.relu
        self._track(stage, output)
        self.stages.append(stage)
        return replaced

    @staticmethod
    def _refuse_channels_last_output(name: str, output: Tensor, size: tuple[int, int]) -> None:
        """Refuse a layer's output that `looks_channels_last` for an image of ``size``.

        Raises:
            ValueError: Naming ``channels_last_to_grid``, and the identity for an output that
                is (N, C, H, W) after all.
        """
        if looks_channels_last(tuple(output.shape), size):
            raise ValueError(
                f"layer {name!r} returned {tuple(output.shape)}: its dimensions 1 and 2 have "
                f"the aspect of the {size[0]} x {size[1]} image and its dimensions 2 and 3 do "
                "not, so it looks channels-last (N, H, W, C), as Swin's blocks return; pass "
                "reshape_transform=ctc_plugin.cam.channels_last_to_grid (or, if it is "
                "(N, C, H, W) after all, reshape_transform=lambda t: t)"
            )

    def _differentiable(self, out: Tensor) -> Tensor:
        """``out``, or a copy of it that requires grad where it has none while gradients are on.

        A frozen layer (``requires_grad=False`` weights) on an input the model cut from the
        graph (preprocessing under ``torch.no_grad()``, ``x.detach()``) computes a map the
        target score depends on, with no gradient path to it; Captum's layer methods make their
        layers' outputs require grad, and so is a stage's map made here. The copy is no leaf,
        so that an in-place ReLU may still write into it; its leaf is kept in `roots`. Under
        ``torch.no_grad()`` (gradients off) ``out`` is kept: such stages are refused by name.
        """
        if out.requires_grad or not torch.is_grad_enabled() or not out.is_floating_point():
            return out
        root = out.detach().requires_grad_()
        self.roots.append(root)
        return root.clone()

    def finish(self) -> None:
        """Hook the gradient of every stage not hooked yet; call once the forward pass is done.

        Hooks are registered as late as possible so that a stage extended by an in-place ReLU is
        hooked once, on its final version; a stage about to be overwritten in place was hooked
        just before (see ``__torch_function__``).
        """
        for stage in self.stages:
            if stage.handle is None:
                self._hook(stage)

    # -- the mode ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _NEUTRAL:
            out = func(*args, **kwargs)
            self._follow(args, kwargs, out)  # .mT, .T: views of an attention's output
            return out
        if name == "view_as" and len(args) == 2 and args[0] is args[1]:
            out = func(*args, **kwargs)  # the same map under another name
            self._alias(args[0], out)
            self._follow(args, kwargs, out)
            return out
        # only discovery follows the attention (`AttentionReach`)
        attention = self.reach is not None and computes_attention(func, args)
        if func in _DROPOUT:
            _refuse_training_dropout(func, name, args, kwargs)
        if func in RANDOM_FUNCTIONS:
            raise TrainingModeError(
                f"{name} draws random numbers while the model runs (stochastic depth or drop "
                "path in training mode, say), so the map would change from call to call; call "
                "model.eval() first"
            )
        tracked = [t for t in _tensors(args, kwargs) if id(t) in self._by_tensor]
        read = [t for t in _tensors(args, kwargs) if id(t) in self._reads]
        passed = [t for t in _tensors(args, kwargs) if self._passed.get(id(t), (None,))[0] is t]
        kind = "conv" if name == "conv2d" else "bn" if func is F.batch_norm else None
        if name in ("relu", "relu_"):
            kind = "relu"
        if not tracked and not read and not passed and kind is None:
            out = func(*args, **kwargs)
            self._follow(args, kwargs, out, attention)
            return out

        first = args[0] if args and isinstance(args[0], Tensor) else None
        extending = None
        if kind in ("bn", "relu") and first is not None:
            wanted = ("conv",) if kind == "bn" else ("conv", "bn")
            extending = next(
                (
                    s
                    for s in self._by_tensor.get(id(first), [])
                    if s.extendable and s.steps[-1] in wanted and s.version == first._version
                ),
                None,
            )
        bn_args = _batchnorm_arguments(args, kwargs) if kind == "bn" else None
        if bn_args is not None and bn_args["training"]:
            self._refuse_training_batchnorm(bn_args, first)

        inplace = _is_inplace(func, name, args, kwargs)
        written = kwargs.get("out", first) if inplace else None
        used = [
            (stage, stage.steps)
            for tensor in tracked
            for stage in self._by_tensor.get(id(tensor), [])
            if stage is not extending
        ]
        used += [self._passed[id(tensor)][1:] for tensor in passed]
        copies = [pair for tensor in read for pair in self._reads[id(tensor)][1]]
        for tensor in tracked if inplace else ():
            for stage in self._by_tensor.get(id(tensor), []):
                if stage is extending:
                    continue
                stage.extendable = False
                if tensor is written and stage.snapshot is None:
                    if stage.handle is None and stage in self.stages:
                        self._hook(stage)  # receives the gradient of the version kept here
                    stage.snapshot = tensor.detach().clone()

        out = func(*args, **kwargs)

        if used:
            self._note_use(used, [*tracked, *passed], name, out, inplace)
        if copies:  # a copy written in place (a hook's clamp_ of its own copy) is still a copy
            self._note_use(copies, read, name, out)

        stages_before = len(self.stages)
        if extending is not None and isinstance(out, Tensor):
            if kind == "bn" and self.fold_bias:
                scale, shift = self._bn_affine(bn_args)
                extending.bias = fold_batchnorm(extending.bias, scale, shift)
            self._extend(extending, out, kind)
        elif kind == "conv" and isinstance(out, Tensor) and out.dim() == 4:
            out = self._differentiable(out)
            self.conv_grids.add((int(out.shape[-2]), int(out.shape[-1])))
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            bias = torch.zeros(out.shape[1], dtype=out.dtype) if bias is None else bias.detach()
            self._new_chain(out, self._label(weight, "conv2d"), "conv", bias.to(out.device))
        elif kind == "bn" and isinstance(out, Tensor) and out.dim() == 4:
            out = self._differentiable(out)
            shift = torch.zeros(out.shape[1], dtype=out.dtype, device=out.device)
            if self.fold_bias:
                shift = self._bn_affine(bn_args)[1]
            self._new_chain(out, self._label(bn_args["running_mean"], "batch_norm"), "bn", shift)
        self._follow(args, kwargs, out, attention, len(self.stages) > stages_before)
        return out

    def _follow(
        self, args: tuple, kwargs: dict, out: Any, attention: bool = False, started: bool = False
    ) -> None:
        """Follow the attention's outputs through a call (`AttentionReach`; discovery only).

        ``started``: the call started a stage (a convolution or BatchNorm whose map is one).
        """
        if self.reach is not None:
            self.reach.follow((args, kwargs), out, attention, started)

    def _note_use(
        self,
        stages: list[tuple[Stage, tuple[str, ...]]],
        inputs: list[Tensor],
        name: str,
        out: Any,
        inplace: bool = False,
    ) -> None:
        """End the chains of ``stages``, whose ``inputs`` a call used, unless it only read them.

        ``stages`` pairs each stage with its steps up to the tensor used. The BatchNorm and
        ReLU of a chain must be the only users of the tensors before them. A call that passes
        on no gradient of them (``detach``, ``isfinite``, a comparison) is no use, nor is one
        that returns an input as it is (``cpu()`` of a CPU tensor); a copy (``output.cpu()`` on
        a GPU) is followed, as a user of the copy uses the map: a recording hook of the user's
        or of pytorch-grad-cam changes no map. Calls under ``no_grad`` pass on no gradient
        either, but neither do the stages' own tensors there: they are used. An in-place call
        uses its inputs (the stages' tensors it writes are ended before it runs).

        A use of the tensor before a stage's ReLU (out of place) takes the ReLU out of the
        stage (`_without_relu`): the map several branches read is the stage's.

        Raises:
            ValueError: A tensor a chain has taken another step past (a convolution's output
                after its BatchNorm), or a copy of it made before, is used: the stage would have
                to be split after the fact.
        """
        results = list(_tensors((out,), {}))
        graded = any(t.requires_grad for t in inputs)
        passed_on = [t for t in results if t.requires_grad and all(t is not i for i in inputs)]
        if not inplace and graded and not passed_on:
            return
        if not inplace and graded and name in _COPIES and len(results) == 1:
            self._reads[id(results[0])] = (results[0], stages)
            return
        for stage, steps in stages:
            if stage.steps != steps and not (not inplace and self._without_relu(stage, steps)):
                raise ValueError(
                    f"the map of {stage.name} after {', '.join(steps)} is used again, by "
                    f"{name}, after {', '.join(stage.steps[len(steps) :])} made it part of the "
                    f"stage ({', '.join(stage.steps)}); IntegrativeCAM cannot split a stage "
                    "once it has followed it: choose the maps to explain with layers=[...]"
                )
            stage.extendable = False

    def _without_relu(self, stage: Stage, steps: tuple[str, ...]) -> bool:
        """Take a stage's last step, its ReLU, out of it, back to the tensor of ``steps``.

        For a tensor that a chain passed on to its ReLU and that is read again (another
        branch's ReLU, a max pooling): the stage's map becomes that tensor, which every reader
        shares. Not where other steps came after ``steps`` or the stage's tensor is hooked or
        kept already (an in-place write into it). Returns whether it was taken out.
        """
        kept = next(
            (t for t, s, past in self._passed.values() if s is stage and past == steps), None
        )
        if (
            kept is None
            or stage.steps != (*steps, "relu")
            or stage.handle is not None
            or stage.snapshot is not None
        ):
            return False
        del self._passed[id(kept)]
        self._untrack(stage)
        self._track(stage, kept)
        stage.steps, stage.relu = steps, False
        return True

    def _refuse_training_batchnorm(self, bn_args: dict[str, Any], first: Tensor | None) -> None:
        """Refuse a BatchNorm call in training mode before it runs (see the class docstring).

        Without running statistics it is refused with ``bias`` on a feature map (4-d: its shift
        would be folded into a stage's bias), and, where the call explains several examples, on
        any input of several rows (the batch's statistics mix them, a ``BatchNorm1d`` in the
        head too); one image's rows (LeViT's tokens flattened into them) mix nothing. NFNet's
        weight standardisation runs ``batch_norm`` on its convolutions' weights, (1, out,
        fan-in): a batch of one, which no stage reads.
        """
        # named by its running mean, or by its weight where it keeps no statistics (one label:
        # an unnamed call takes the next number once)
        running = bn_args["running_mean"]
        label = self._label(running if running is not None else bn_args.get("weight"), "batch_norm")
        if running is not None:
            raise TrainingModeError(
                f"BatchNorm {label!r} runs in training mode: it would update its running "
                "statistics (the model would change) and normalise with the batch's statistics "
                "(each map would depend on the other examples); call model.eval() first"
            )
        if self.fold_bias and first is not None and first.dim() == 4:
            reason = (
                f"BatchNorm {label!r} keeps no running statistics, so it normalises with the "
                "batch's and cannot be folded into a bias"
            )
            raise BatchNormBiasError(
                f"{reason}; pass bias=False, or {RUNNING_STATISTICS}", reason=reason
            )
        if self.examples > 1 and first is not None and first.dim() >= 2 and first.shape[0] > 1:
            raise TrainingModeError(
                f"BatchNorm {label!r} keeps no running statistics, so it normalises the batch "
                "with the batch's own statistics: each example's map would depend on the other "
                f"examples; explain one example at a time (a batch of 1), or {RUNNING_STATISTICS}"
            )

    @staticmethod
    def _bn_affine(a: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The BatchNorm's ``(scale, shift)``, in float32 at least, without autograd nodes.

        Nodes recorded here would be saved tensors the model's own forward pass does not save:
        ``torch.utils.checkpoint`` (timm's ``set_grad_checkpointing``) would then find fewer in
        its recomputation and fail. The fold is computed in float32 at least, as the stage maps
        are: in float16 or bfloat16, ``shift = beta - mean * scale`` can cancel.
        """
        with torch.no_grad():
            tensors = [a[key] for key in ("running_mean", "running_var", "weight", "bias")]
            return batch_norm_affine(*(_at_least_float32(t) for t in tensors), a["eps"])


def _at_least_float32(tensor: Tensor | None) -> Tensor | None:
    """``tensor`` in float32 where it is in a lower precision (float16, bfloat16)."""
    if tensor is None:
        return None
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def looks_channels_last(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """Whether a 4-D map of ``shape`` looks (N, H, W, C) rather than (N, C, H, W).

    True where its dimensions 1 and 2 have exactly the aspect of the ``size`` (H, W) image and
    its dimensions 2 and 3 do not: a grid of patches of a non-square image (4 x 6 for 16 x 24)
    read as (N, C, H, W) is a 6 x C "grid"; on a square image, a grid of 4 x 4 patches with 8
    channels would be a 4 x 8 one. A convolutional map (N, C, h, w) passes unless ``C / h``
    happens to be the image's aspect while ``h / w`` is not.
    """
    if len(shape) != 4:
        return False
    height, width = size
    return shape[1] * width == shape[2] * height and shape[2] * width != shape[3] * height


def module_names(model: nn.Module) -> dict[int, str]:
    """Map the ``id`` of each conv weight and BatchNorm running mean to its module's name.

    A BatchNorm without running statistics is found by its weight (where it has one). Each
    ``nn.Conv2d`` module's own ``id`` is mapped too (`StageTracer.running_convs`). Only weights
    the module holds as parameters are mapped: one made at every call (a parametrization,
    pruning's or weight norm's pre-hook) is another tensor at each call, and the ``id`` of a
    freed one may come back as that of any tensor. The names are the paths of the user's model,
    also behind the package's normalisation
    (`ctc_plugin.module_paths.named_modules_as_given`).
    """
    names: dict[int, str] = {}
    for name, module in named_modules_as_given(model):
        held = module._parameters  # a mapping without .get in a TorchScript module
        weight = held["weight"] if "weight" in held else None
        if isinstance(module, nn.Conv2d):
            names[id(module)] = name
            if weight is not None:
                names[id(weight)] = name
        elif isinstance(module, BATCH_NORM_TYPES) and module.running_mean is not None:
            names[id(module.running_mean)] = name
        elif isinstance(module, BATCH_NORM_TYPES) and weight is not None:
            names[id(weight)] = name
    return names


def _with_item(sequence: Any, item: int, value: Tensor) -> Any:
    """``sequence`` (a tuple, a named tuple or a list) with ``value`` at ``item``."""
    parts = list(sequence)
    parts[item] = value
    if isinstance(sequence, list):
        return parts
    return type(sequence)(*parts) if hasattr(sequence, "_fields") else type(sequence)(parts)
