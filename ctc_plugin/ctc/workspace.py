"""Reusable scratch buffers for the speed-ups (fused sharing, sparse convolutions)."""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["Workspace"]


class Workspace:
    """Reusable scratch buffers for the fused sharing, one set per thread.

    Fresh large tensors cost a page fault per 4 KiB on first touch (on a CPU as much as several
    elementwise passes), so the buffers are kept and reused across layers and calls in named
    slots; each slot grows to the largest request seen and is released with its owner.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(
        self,
        like: torch.Tensor,
        count: int = 2,
        slot: str = "copies",
        shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """``count`` uninitialised contiguous tensors shaped, typed and placed like ``like``.

        ``shape`` and ``dtype`` override the shape and dtype. Buffers of one slot are reused by
        the next request for that slot; requests for different slots never share memory.
        """
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {}
        held = slots.get(slot)
        shape = tuple(like.shape) if shape is None else tuple(shape)
        dtype = like.dtype if dtype is None else dtype
        numel = math.prod(shape)
        if held is None or held.dtype != dtype or held.device != like.device:
            held = slots[slot] = torch.empty(count, numel, dtype=dtype, device=like.device)
        elif held.shape[0] < count or held.shape[1] < numel:  # grow, never shrink
            rows, columns = max(count, held.shape[0]), max(numel, held.shape[1])
            held = slots[slot] = torch.empty(rows, columns, dtype=dtype, device=like.device)
        return tuple(held[i, :numel].view(shape) for i in range(count))
