"""What a module's weights are: a digest of their values, and a cheap sign that they changed.

Two questions about a model's parameters and buffers, asked by several parts of the package:

- [`state_digest`][ctc_plugin.module_state.state_digest]: are these the same weights? A SHA-256
  digest of the state dict's names, shapes and values, in which the device, the memory format,
  the floating dtype and the wrappers ``nn.DataParallel``, ``DistributedDataParallel`` and
  ``torch.compile`` do not count (Explainer checkpoints, and the classifier an Explainer was
  trained for).
- [`weights_state`][ctc_plugin.module_state.weights_state]: were the weights written or replaced
  since last asked? Each tensor's storage address and version counter, and a few of its values
  (the SAM segmenter's cache, and `DigestMemo`).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DigestMemo", "state_digest", "state_dtypes", "unwrapped", "weights_state"]


def unwrapped(module: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``.

    These wrappers hold the same parameters under prefixed keys (``module.``, ``_orig_mod.``);
    the digest hashes the wrapped model's own keys, so a wrapped model is the same one.
    """
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile
            module = module._orig_mod
        else:
            return module


def state_digest(module: nn.Module, cast: torch.dtype | None = None) -> str:
    """Return a SHA-256 hex digest of ``module``'s state dict (parameters and buffers).

    Each entry's name, shape and values are hashed in the state dict's key order (floating-point
    values as float64, which every float dtype casts to exactly), so two modules have the same
    digest exactly when their state dicts hold equal values tensor for tensor: the device,
    memory format, dtype (see `state_dtypes`) and wrappers (``nn.DataParallel``,
    ``DistributedDataParallel``, ``torch.compile``) do not count. One tensor at a time is copied
    to the CPU.

    Args:
        module: The module.
        cast: Hash the floating-point values as ``module.to(cast)`` would hold them (the digest
            of a half-precision copy, without making one).
    """
    digest = hashlib.sha256()
    for key, value in unwrapped(module).state_dict().items():
        digest.update(f"{key}\0".encode())
        if not isinstance(value, Tensor):  # extra state, a quantized layer's packed weights
            digest.update(_serialised(value))
            continue
        value = value.detach()
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


#: Values of each tensor that `weights_state` reads, evenly spread over it.
SAMPLED_VALUES = 16


def weights_state(module: nn.Module) -> tuple[Any, ...]:
    """What changes whenever a tensor of ``module`` is written or replaced.

    Each tensor's storage address and version counter: ``load_state_dict`` and optimiser steps
    write in place and move the counter; ``.to()`` makes new tensors. Writes through
    ``.data`` (``p.data.copy_(other)``, ``p.data.normal_()``, ``p.data += 1``) move no
    counter, so `SAMPLED_VALUES` values of each tensor, evenly spread, count too (read in one
    transfer per device): a re-initialisation or a copy of other weights changes them; a
    write through ``.data`` to a few single values between them is not seen. Entries that are
    not tensors (a module's extra state, a quantized layer's dtype) count by their ``repr``.
    """
    entries: list[Any] = []
    samples: dict[torch.device, list[Tensor]] = {}
    for value in module.state_dict().values():
        if not isinstance(value, Tensor):
            entries.append(repr(value))
            continue
        entries.append((value.data_ptr(), value._version))
        sample = _spread_sample(value)
        if sample is not None:
            samples.setdefault(sample.device, []).append(sample)
    for device in sorted(samples, key=str):
        values = torch.cat(samples[device]).cpu().numpy()
        entries.append(hashlib.sha256(values.tobytes()).hexdigest())
    return tuple(entries)


def _spread_sample(tensor: Tensor) -> Tensor | None:
    """`SAMPLED_VALUES` values of ``tensor`` evenly spread, as float64; None where unreadable."""
    if (
        tensor.layout != torch.strided
        or tensor.is_meta
        or tensor.is_quantized
        or tensor.is_complex()
        or not tensor.numel()
    ):
        return None
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLED_VALUES)
    return flat[::step][:SAMPLED_VALUES].to(torch.float64)


class DigestMemo:
    """`state_digest` of one module, computed again only after its weights change.

    The digest reads every value; `weights_state` addresses, version counters and a few
    values of each tensor. Calls
    from several threads at once may each compute it; all get the same value.
    """

    def __init__(self) -> None:
        self._memo: tuple[int, tuple[Any, ...], str] | None = None

    def digest(self, module: nn.Module) -> str:
        """``state_digest(module)``, from the memo while `weights_state` is unchanged."""
        key = (id(module), weights_state(module))
        memo = self._memo
        if memo is not None and memo[:2] == key:
            return memo[2]
        value = state_digest(module)
        self._memo = (*key, value)
        return value
