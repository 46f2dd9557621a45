"""What a module's weights are: a digest of their values, and a cheap sign that they changed.

Two questions about a model's parameters and buffers, asked by several parts of the package:

- [`state_digest`][ctc_plugin.module_state.state_digest]: are these the same weights? A SHA-256
  digest of the state dict's names, shapes and values, in which the device, the memory format,
  the floating dtype and the wrappers ``nn.DataParallel``, ``DistributedDataParallel`` and
  ``torch.compile`` do not count (Explainer checkpoints, and the classifier an Explainer was
  trained for).
- [`WeightsWatch`][ctc_plugin.module_state.WeightsWatch]: were the weights written or replaced
  since? Each tensor's storage address and version counter, and a few of its values (the SAM
  segmenter's cache, and `DigestMemo`).

And one thing a call must leave as it found it: [`modes_kept`][ctc_plugin.module_state.modes_kept]
puts every submodule's training flag back (a model fine-tuned with its BatchNorms frozen in eval
mode stays so after code that calls ``model.eval()`` and ``model.train()``). A method or a probe
that runs a model runs its compiled code as Python code
([`compiled_code_eager`][ctc_plugin.module_state.compiled_code_eager]): a model compiled in place
gives the numbers of the model it compiles, and nothing compiles during the call.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ctc_plugin.module_paths import path_without_wrappers, unwrapped

__all__ = [
    "DigestMemo",
    "WeightsWatch",
    "compiled_code_eager",
    "compiled_code_stance",
    "eager_switch",
    "modes_kept",
    "state_digest",
    "state_dtypes",
]


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule's training flag back as it was on entry, on exit (also on errors).

    ``model.train(was_training)`` restores one flag for all: BatchNorms kept in eval mode inside
    a model in training mode would come back training.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def compiled_code_stance(eager: bool) -> Iterator[None]:
    """Run ``torch.compile``'d code eagerly (``eager``) or compiled, in this thread, inside.

    A compiled model (``model.compile()``, a submodule compiled on its own, compiled code a
    forward function calls) would hand its forward to dynamo, which traces what the methods
    put around it (CTC's rules, Integrative CAM's stage tracing, Zennit's hooks) and compiles
    again at every call, or fails inside the rules. While a method runs the model, its
    compiled code runs as the original Python code instead, whose every torch call the method
    sees, so a compiled model gives the numbers of the model it compiles. Code inside that must
    stay compiled (CTC's own rules) runs with ``eager=False``. Nothing happens where dynamo was
    never imported (nothing is compiled) or where this torch has no thread-local switch for it
    (`eager_switch`).
    """
    state = eager_switch()
    if state is None:
        yield
        return
    prior = getattr(state, "depth", 0)
    state.depth = (prior + 1) if eager else 0
    try:
        yield
    finally:
        state.depth = prior


def eager_switch() -> Any:
    """Dynamo's thread-local switch that runs compiled code eagerly, or ``None`` without one."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if not hasattr(eval_frame, "_is_eager_on_nested_compile"):
        return None
    return getattr(eval_frame, "_force_eager_nested_compile", None)


def compiled_code_eager() -> Any:
    """A context in which ``torch.compile``'d code runs eagerly, where this torch can say so.

    The methods run a model compiled in place (``model.compile()``) this way, and a probe that
    runs a model under a torch function mode too (dynamo would trace the mode; ``fullgraph=True``
    code fails there): [`compiled_code_stance`][ctc_plugin.module_state.compiled_code_stance]
    where this torch has the thread-local switch, else ``torch.compiler.set_stance(
    "force_eager")`` (torch 2.6 and later: for every thread meanwhile), and a context that does
    nothing before.
    """
    if eager_switch() is not None or "torch._dynamo.eval_frame" not in sys.modules:
        return compiled_code_stance(True)  # nothing compiled yet where dynamo is not imported
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def state_digest(module: nn.Module, cast: torch.dtype | None = None) -> str:
    """Return a SHA-256 hex digest of ``module``'s state dict (parameters and buffers).

    Each entry's name, shape and values are hashed in the state dict's key order (floating-point
    values as float64, which every float dtype casts to exactly), so two modules have the same
    digest exactly when their state dicts hold equal values tensor for tensor: the device,
    memory format, dtype (see `state_dtypes`) and wrappers (``nn.DataParallel``,
    ``DistributedDataParallel``, ``torch.compile``) do not count, around the model or around a
    part of it (``model.backbone = torch.compile(model.backbone)``). One tensor at a time is copied
    to the CPU.

    Args:
        module: The module.
        cast: Hash the floating-point values as ``module.to(cast)`` would hold them (the digest
            of a half-precision copy, without making one).
    """
    digest = hashlib.sha256()
    module = unwrapped(module)
    for key, value in module.state_dict().items():
        key = path_without_wrappers(module, key)  # a compiled block's keys are the block's
        digest.update(f"{key}\0".encode())
        if not isinstance(value, Tensor):  # extra state, a quantized layer's packed weights
            digest.update(_serialised(value))
            continue
        value = value.detach()
        if value.layout != torch.strided and not value.is_nested:  # a sparse buffer
            value = value.to_dense()
        if value.is_floating_point():
            value = (value if cast is None else value.to(cast)).double()
        digest.update(f"{tuple(value.shape)}\0".encode())
        flat = value.cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


def _serialised(value: object) -> bytes:
    """The bytes ``torch.save`` writes for a state entry that is not a tensor.

    Its ``repr`` would do for plain values, but abbreviates large tensors inside others (the
    packed weights of a quantized layer): two layers differing in the middle would look alike.
    """
    stream = io.BytesIO()
    torch.save(value, stream)
    return stream.getvalue()


def state_dtypes(module: nn.Module) -> list[str]:
    """The floating-point dtypes of ``module``'s state dict, sorted, each once."""
    return sorted(
        {
            str(value.dtype).removeprefix("torch.")
            for value in module.state_dict().values()
            if isinstance(value, Tensor) and value.is_floating_point()
        }
    )


#: Values of each tensor that `WeightsWatch` reads, evenly spread over it.
SAMPLED_VALUES = 16


class WeightsWatch:
    """Whether a module's weights were written or replaced since the watch was made, cheaply.

    It records each state tensor's storage address and version counter (``load_state_dict``
    and optimiser steps write in place and move the counter; ``.to()`` makes new tensors;
    tensors made under ``torch.inference_mode()`` have no counter) and
    keeps views of `SAMPLED_VALUES` values of each, evenly spread: writes through ``.data``
    (``p.data.copy_(other)``, ``p.data.normal_()``, ``p.data += 1``) move no counter, but a
    re-initialisation or a copy of other weights changes those values; a write through
    ``.data`` to a few single values between them is not seen. Entries that are not tensors (a
    module's extra state, a quantized layer's dtype and packed weights) count by their
    ``repr``; tensors that every ``state_dict`` call makes anew (a quantized layer's scale and
    zero point) by their values; sparse and nested tensors by identity and version counter,
    and quantized ones by address and version counter (no values of these are kept).

    A look ([`unchanged`][ctc_plugin.module_state.WeightsWatch.unchanged]) reads the state
    dict's entries and then all kept values with one concatenation per device and dtype,
    compared bit for bit (NaN weights stay unchanged): about 0.8 ms for a torchvision ResNet-50's
    320 tensors on one CPU thread, where hashing them takes 150 ms (docs/explainer.md gives the
    command). The views keep the storage of
    the weights they watch alive until a look finds them changed (then they are let go), so
    addresses are never those of other, newer tensors. Pickled or copied, a watch keeps no
    views and finds every module changed.

    Args:
        module: The module to watch.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module_id = id(module)
        first = list(module.state_dict(keep_vars=True).values())
        again = module.state_dict(keep_vars=True).values()
        #: Entries that every ``state_dict`` call makes anew (a quantized layer's scale and
        #: zero point): compared by their values, as their addresses change.
        self._fresh = frozenset(
            i for i, (a, b) in enumerate(zip(first, again)) if isinstance(a, Tensor) and a is not b
        )
        self._entries, samples = _state_entries(first, self._fresh)
        self._samples: dict[tuple[torch.device, torch.dtype], list[Tensor]] | None = samples
        self._values = _read_samples(samples)
        #: Sparse and nested tensors count by identity: held, so that no other takes their id.
        self._held = [v for v in first if isinstance(v, Tensor) and not _is_plain(v)]

    def unchanged(self, module: nn.Module) -> bool:
        """True while ``module`` is the watched module and no tensor of it was seen to change."""
        samples, values = self._samples, self._values
        if samples is None or values is None:
            return False
        state = list(module.state_dict(keep_vars=True).values())
        same = (
            id(module) == self._module_id
            and _state_entries(state, self._fresh, sampled=False)[0] == self._entries
            and all(
                torch.equal(now, values[group]) for group, now in _read_samples(samples).items()
            )
        )
        if not same:
            self._samples = self._values = None
            self._held = []
        return same

    def __getstate__(self) -> dict[str, Any]:
        """Pickled or copied without the views (they would carry whole storages along)."""
        return {**self.__dict__, "_samples": None, "_values": None, "_held": []}


def _state_entries(
    values: list[Any], fresh: frozenset[int] = frozenset(), sampled: bool = True
) -> tuple[tuple[Any, ...], dict[tuple[torch.device, torch.dtype], list[Tensor]]]:
    """What the state entries ``values`` (a ``state_dict``'s, in order) count by, and views.

    A tensor counts by its address and version counter; one of the ``fresh`` positions (made
    anew by every ``state_dict`` call) by its values; a sparse or nested one by its identity
    and version counter; a non-tensor by its ``repr``. With ``sampled``, views of
    `SAMPLED_VALUES` values of each strided tensor come too, grouped by device and dtype.
    """
    entries: list[Any] = []
    samples: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for index, value in enumerate(values):
        if not isinstance(value, Tensor):
            entries.append(repr(value))
            continue
        # inference tensors keep no version counter: their values alone tell their writes
        version = None if value.is_inference() else value._version
        if index in fresh:
            entries.append(_values_of(value))
            continue
        if not _is_plain(value):
            entries.append((id(value), version))
            continue
        entries.append((value.data_ptr(), version))
        view = _spread_view(value) if sampled else None
        if view is not None:
            samples.setdefault((view.device, view.dtype), []).append(view)
    return tuple(entries), samples


def _is_plain(tensor: Tensor) -> bool:
    """Whether ``tensor`` is strided and not nested (it has an address and can be viewed)."""
    return tensor.layout == torch.strided and not tensor.is_nested


def _values_of(tensor: Tensor) -> Any:
    """What a tensor made anew by every ``state_dict`` call is compared by: its values."""
    if not _is_plain(tensor) or tensor.is_quantized or tensor.is_meta:
        return repr(tensor)
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return str(tensor.dtype), tuple(tensor.shape), flat.view(torch.uint8).numpy().tobytes()


def _read_samples(
    samples: dict[tuple[torch.device, torch.dtype], list[Tensor]],
) -> dict[tuple[torch.device, torch.dtype], Tensor]:
    """The values the views show now, one tensor of bytes per device and dtype."""
    with torch.no_grad():
        return {
            group: torch.cat(
                [view if view.dim() == 1 else view.reshape(-1) for view in views]
            ).view(torch.uint8)
            for group, views in samples.items()
        }


def _spread_view(tensor: Tensor) -> Tensor | None:
    """A view of `SAMPLED_VALUES` values of ``tensor``, evenly spread; None where unreadable.

    A view, not a copy: it shows what later writes put there. A dense tensor in any memory
    format (channels-last weights) is read in its memory order; one that is not dense (an
    expanded or sliced buffer) at the first and last index of each dimension.
    """
    if not _is_plain(tensor) or tensor.is_meta or tensor.is_quantized or not tensor.numel():
        return None
    tensor = tensor.detach()
    order = sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim))
    dense = tensor.permute(order)
    if dense.is_contiguous():
        flat = dense.view(-1)
        step = max(1, flat.numel() // SAMPLED_VALUES)
        return flat[::step][:SAMPLED_VALUES]
    return tensor[tuple(slice(None, None, max(1, size - 1)) for size in tensor.shape)]


class DigestMemo:
    """`state_digest` of one module, computed again only after its weights change.

    The digest reads every value; a `WeightsWatch` addresses, version counters and a few
    values of each tensor. Calls from several threads at once may each compute it; all get
    the same value.
    """

    def __init__(self) -> None:
        self._memo: tuple[WeightsWatch, str] | None = None

    def digest(self, module: nn.Module) -> str:
        """``state_digest(module)``, from the memo while a `WeightsWatch` sees no change."""
        memo = self._memo
        if memo is not None and memo[0].unchanged(module):
            return memo[1]
        watch = WeightsWatch(module)  # before the digest: a write while hashing shows next time
        value = state_digest(module)
        self._memo = (watch, value)
        return value
