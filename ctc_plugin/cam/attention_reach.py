"""Whether the attention a forward pass computes reaches a convolutional stage.

A CNN can compute attention inside its stages: BoTNet, HaloNet and LambdaNet put it in place of
a bottleneck's 3 x 3 convolution, a BatchNorm right after it; NextViT and EfficientViT (MSRA)
feed its output to convolutions. Integrative CAM's convolutional stages then show what the
attention did, as they show any other layer between them. Where an attention's output reaches
no stage (a vision transformer's blocks of no known type, a transformer head over a CNN's map,
attention stages after the last convolution), the stages alone would be a partial map, and
Integrative CAM refuses the model. [`AttentionReach`][ctc_plugin.cam.attention_reach.AttentionReach]
follows each attention call's output through the pass to tell the two apart.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from torch import Tensor


def _leaves(value: Any) -> Iterator[Tensor]:
    """The tensors of a call's arguments or result (tensors, and those in lists and tuples)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)


class AttentionReach:
    """Which attention calls of one forward pass have an output that reaches a stage.

    Each attention call (`ctc_plugin.cam.layers.computes_attention`) is numbered, and every
    tensor computed from its output carries its number, until a call that starts a stage (a
    convolution or a BatchNorm whose map is a stage) uses such a tensor: that attention is then
    *reached*. The tensors are held by weak references (an ``id`` is checked against its tensor,
    never reused wrongly), so that following them keeps no activation alive.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._reached: set[int] = set()
        self._carried: dict[int, tuple[weakref.ref[Tensor], frozenset[int]]] = {}

    @property
    def unreached(self) -> int:
        """How many attention calls have an output that reached no stage."""
        return self.calls - len(self._reached)

    def _carried_by(self, inputs: tuple) -> frozenset[int]:
        numbers: frozenset[int] = frozenset()
        for tensor in _leaves(inputs):
            entry = self._carried.get(id(tensor))
            if entry is not None and entry[0]() is tensor:
                numbers = numbers | entry[1]
        return numbers

    def follow(self, inputs: tuple, output: Any, attention: bool, stage: bool) -> None:
        """Record one call of the pass.

        Args:
            inputs: The call's arguments (``args`` and ``kwargs`` values).
            output: What it returned.
            attention: Whether the call computes attention: its output carries a new number.
            stage: Whether the call starts a stage: the attention its inputs carry is reached.
        """
        if not attention and not self._carried:
            return  # no attention so far: nothing to follow
        numbers = self._carried_by(inputs)
        if attention:
            numbers = numbers | {self.calls}
            self.calls += 1
        if not numbers:
            return
        if stage:
            self._reached.update(numbers)
            return
        for tensor in _leaves(output):
            self._carried[id(tensor)] = (weakref.ref(tensor), numbers)


__all__ = ["AttentionReach"]
