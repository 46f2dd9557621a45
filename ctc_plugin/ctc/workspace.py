"""Reusable memory for the speed-ups: scratch buffers, and results' memory once it is free again."""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["OutputPool", "Workspace"]


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


#: The use count of a tensor's storage (torch's private binding; ``None`` where it is missing,
#: and then nothing is ever reused).
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


class OutputPool:
    """Memory for a pass's full-size results, reused once nothing else holds it.

    A result goes to the model, which may keep it as long as it likes, so unlike a `Workspace`
    slot its memory is reused only when nothing but the pool uses it any more (torch's storage
    use count: every tensor on it counts, views, NumPy arrays and saved tensors included). A
    fresh large tensor costs a page fault per 4 KiB on first touch (on a CPU as much as several
    elementwise passes over it); a reused one costs none. The pool lives as long as its pass.

    Attributes:
        keep: At most this many buffers are held: a request that none fits lets go of the
            least recently used free one (or, when all are in use, gets memory of its own).
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._held: list[torch.UntypedStorage] = []

    def empty(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, typed and placed like ``like``."""
        nbytes = math.prod(shape) * like.element_size()
        for index, held in enumerate(self._held):
            if held.nbytes() == nbytes and held.device == like.device and _free(held):
                self._held.append(self._held.pop(index))  # the most recently used last
                return torch.empty(0, dtype=like.dtype, device=like.device).set_(held, 0, shape)
        fresh = torch.empty(shape, dtype=like.dtype, device=like.device)
        if _storage_use_count is None:
            return fresh
        if len(self._held) >= self.keep:  # let go of the least recently used free buffer
            free = [index for index, held in enumerate(self._held) if _free(held)]
            if not free:
                return fresh
            del self._held[free[0]]
        self._held.append(fresh.untyped_storage())
        return fresh


def _free(held: torch.UntypedStorage) -> bool:
    """Whether nothing but the pool uses the storage ``held``."""
    return _storage_use_count is not None and _storage_use_count(held._cdata) == 1
