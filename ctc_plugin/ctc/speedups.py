"""The one seam for speed-ups of the CTC pass: faster implementations held equal to the spec.

The rules of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] and the bias sharing of
[`ctc_plugin.ctc.sharing`][ctc_plugin.ctc.sharing] are the readable specification: dense tensors,
out of place, in the words of the paper. Everything that only makes a call faster is chosen here,
by one private option object, [`Speedups`][ctc_plugin.ctc.speedups.Speedups], which
[`CTC`][ctc_plugin.CTC] holds as ``_speedups``:

- ``gradient_shortcut``: ``"none"`` sharing as one forward and one backward pass (the
  linearised network's gradient x input) instead of the pass of K + 1 copies;
- ``copies_per_pass``: on a CPU, examples explained in groups so that a pass carries at most
  about this many copies (their activations stay in the caches);
- ``fused_sharing``: the bias sharing computed in place, on reusable scratch buffers
  ([`Workspace`][ctc_plugin.ctc.workspace.Workspace]), on a CPU in cache-sized blocks
  (``block_elements``) ([`fused_sharing`][ctc_plugin.ctc.fused_sharing]);
- ``packed_boxes`` (``"reference"`` with ``fused_sharing``): the formula computed only on the
  boxes around each copy's nonzero values, packed into blocks of boxes of about one size;
- ``native_formula`` (``"reference"`` with ``fused_sharing``, float32 on a CPU): the formula as
  one compiled loop nest per copy and channel ([`native`][ctc_plugin.ctc.native], built on
  first use), on each copy's box in place, instead of torch's passes over blocks and packed
  boxes;
- ``proportional_rows`` (``"proportional"`` with ``fused_sharing`` and ``sparse_copies``): the
  shares computed only on each copy's rows where those take at most this fraction of the
  copies' rows;
- ``host_checks``: skip optional work after asking the device whether it is needed (a host
  synchronisation; on a CPU only, by default: elsewhere the extra kernels cost less than the
  wait);
- ``compiled_sharing``: the ``"reference"`` and ``"proportional"`` sharing of the spec compiled
  by ``torch.compile`` (its elementwise steps and reductions fused into a few kernels per layer:
  what a GPU, bound by launches, needs), instead of the fused implementations;
- ``sparse_copies``: on a CPU, each 2-d convolution computed only inside the box where each copy
  can be nonzero ([`SparseGatedPass`][ctc_plugin.ctc.sparse.SparseGatedPass]), dense where the
  boxes cover more than ``sparse_dense_above`` of the map; the boxes travel with the results,
  and results go into memory the model has let go of
  ([`OutputPool`][ctc_plugin.ctc.workspace.OutputPool]);
- ``tensor_steps``: the steps of recurrent layers (LSTM, GRU, RNN) in plain tensor operations
  on the grouped copies, a bidirectional layer's directions in the same steps where the mode
  shares each unit's bias by that unit alone
  ([`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps]), instead of one rule call per
  operation of every step.

Each is tested equal to the spec (``SPEC``); ``benchmarks/bench_speedups.py`` measures what each
one gains. Tests and benchmarks select them with ``ctc._speedups = Speedups(...)``.

A later speed-up plugs in here, not in the rules: a new option of `Speedups`, a faster
[`BiasSharing`][ctc_plugin.ctc.sharing.BiasSharing] from
[`sharing`][ctc_plugin.ctc.speedups.Speedups.sharing], or a subclass of
[`GatedPass`][ctc_plugin.ctc.rules.GatedPass] from
[`gated_pass`][ctc_plugin.ctc.speedups.Speedups.gated_pass] that overrides some rules (every
operation of the pass reaches the rules through `GatedPass` methods, the linear ones through
[`linear`][ctc_plugin.ctc.rules.GatedPass.linear]).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctc_plugin.ctc.fused_sharing import (
    FusedNoSharing,
    FusedProportionalSharing,
    FusedReferenceSharing,
)
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import (
    BiasSharing,
    check_mode,
    make_sharing,
    statistic_dims,
)
from ctc_plugin.ctc.sparse import SparseGatedPass


@dataclass(frozen=True)
class Speedups:
    """Which speed-ups a CTC pass uses; none of them changes a result beyond float rounding.

    Attributes:
        gradient_shortcut: ``"none"`` sharing as gradient x input of the network linearised at
            its gates: one forward and one backward pass instead of K + 1 forward-equivalents.
            Not for float16 or bfloat16 inputs to a model that computes in a wider format
            (behind a float32 normalisation): their gradient would be rounded to theirs.
        copies_per_pass: On a CPU, explain the examples of a batch in groups so that one pass
            carries at most about this many copies (a group holds one example at least);
            ``None``: the whole batch in one pass. On other devices the batch is one group.
        fused_sharing: Share biases with the fused implementations
            ([`fused_sharing`][ctc_plugin.ctc.fused_sharing]: in place, blockwise, on scratch
            buffers) instead of the spec's dense ones.
        block_elements: With ``fused_sharing`` in ``"reference"`` and ``"proportional"`` mode
            on a CPU, about how many values one block of the sharing holds (1 MiB in float32:
            a block and the formula's scratch buffers stay in a core's cache, and the scratch
            memory is one block's, not a layer's; on ResNet-50 with 64 features, blocks of
            4 MiB took 9 % longer for "reference" and 7 % for "proportional" on a 2 MiB-L2
            Xeon, ``python benchmarks/bench_sparse.py --repeats 3 --blocks``); ``None``: the
            whole layer in one block, as on other devices.
        packed_boxes: With ``fused_sharing`` in ``"reference"`` mode on a CPU, where the
            formula runs as torch's operations (not ``native_formula``), compute it only on the
            boxes around the copies' nonzero values where, packed in groups of about one size
            (each at its largest box's size), they take at most this fraction of a layer; 0
            turns it off.
        proportional_rows: With ``fused_sharing`` and ``sparse_copies`` in ``"proportional"``
            mode on a CPU, compute the shares only on each copy's rows (outside them it is zero)
            where those take at most this fraction of the copies' rows; 0 turns it off. On
            ResNet-50 with 64 grid features they cover 38 % of the values, and the sharing of
            one call took 0.66 s instead of 0.88 s (``python benchmarks/bench_sparse.py
            --repeats 3 --blocks``; with 0.5 0.68 s, with 1.0, the deep layers too, 0.79 s).
        host_checks: Whether the fused sharing may read a value back from the device to skip
            work that is not needed (the units of ``"proportional"`` where every sharing copy
            is zero, the full copy's exact zeros of ``"reference"``). Each check is a host
            synchronisation, which stalls a GPU's queue; without it the work is done for every
            unit (a few more, full-size kernels). The recurrent rule likewise reads its initial
            states only with host checks, and without them takes the zeros that torch's modules
            make in the pass as zeros (`GatedPass.known_zeros`). ``None``: on a CPU only.
        compiled_sharing: Share biases in ``"reference"`` and ``"proportional"`` mode with
            [`CompiledSharing`][ctc_plugin.ctc.speedups.CompiledSharing] (the spec compiled by
            ``torch.compile``) instead of the fused implementations; a string names the
            ``torch.compile`` backend (``True``: ``"inductor"``). The first call of each layer
            shape compiles (tens of seconds). Off by default: on a CPU the fused
            implementations are as fast (``benchmarks/bench_ctc.py --compiled-sharing``), and
            on a GPU it has not been measured yet.
        sparse_copies: On a CPU, compute each 2-d convolution only inside each copy's box
            ([`SparseGatedPass`][ctc_plugin.ctc.sparse.SparseGatedPass]).
        sparse_dense_above: With ``sparse_copies``, a convolution is computed dense where the
            boxes (at their groups' sizes) cover more than this fraction of its output.
        tensor_steps: Run the steps of recurrent layers as plain tensor operations on the
            grouped copies, a bidirectional layer's directions as one where the mode allows
            ([`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps]), not one rule call per
            operation of every step.
        native_formula: With ``fused_sharing`` in ``"reference"`` mode on a CPU in float32,
            compute the formula with a kernel compiled on first use
            ([`native`][ctc_plugin.ctc.native]): one pass over each copy's box instead of some
            twenty passes of torch over blocks and packed boxes. ``None``: where it builds (a
            C compiler and glibc 2.35 or later), else torch's operations; ``True``: raise where
            it cannot be built; ``False``: torch's operations.
    """

    gradient_shortcut: bool = True
    copies_per_pass: int | None = 64
    fused_sharing: bool = True
    block_elements: int | None = 1 << 18
    packed_boxes: float = 0.5
    proportional_rows: float = 0.75
    host_checks: bool | None = None
    compiled_sharing: bool | str = False
    sparse_copies: bool = True
    sparse_dense_above: float = 0.6
    tensor_steps: bool = True
    native_formula: bool | None = None

    def sharing(self, mode: str) -> BiasSharing:
        """The bias sharing of a mode: the spec's, or the fused one (raises for unknown modes)."""
        check_mode(mode)
        if self.compiled_sharing and mode != "none":
            backend = "inductor" if self.compiled_sharing is True else self.compiled_sharing
            return CompiledSharing(mode, backend)
        if not self.fused_sharing:
            return make_sharing(mode)
        if mode == "reference":
            return FusedReferenceSharing(
                self.block_elements,
                self.packed_boxes,
                host_checks=self.host_checks,
                native=self.native_formula,
            )
        if mode == "proportional":
            return FusedProportionalSharing(
                self.block_elements, self.host_checks, rows_fraction=self.proportional_rows
            )
        return FusedNoSharing()

    def examples_per_pass(self, copies_per_example: int, device: torch.device) -> int | None:
        """How many examples one pass explains (``None``: all of them)."""
        if self.copies_per_pass is None or device.type != "cpu":
            return None
        return max(1, self.copies_per_pass // copies_per_example)

    def gated_pass(
        self, layout: CopyLayout, sharing: BiasSharing, gradient: bool = False
    ) -> GatedPass:
        """The pass object whose rules the interception applies.

        The spec's `GatedPass`, or with ``sparse_copies`` a
        [`SparseGatedPass`][ctc_plugin.ctc.sparse.SparseGatedPass] (not for the gradient path,
        whose single copy is dense).
        """
        steps = self.tensor_steps
        if self.sparse_copies and not gradient:
            return SparseGatedPass(
                layout=layout,
                sharing=sharing,
                tensor_steps=steps,
                host_checks=self.host_checks,
                dense_above=self.sparse_dense_above,
            )
        return GatedPass(
            layout=layout,
            sharing=sharing,
            gradient=gradient,
            tensor_steps=steps,
            host_checks=self.host_checks,
        )


#: The readable specification: no speed-up at all.
SPEC = Speedups(
    gradient_shortcut=False,
    copies_per_pass=None,
    fused_sharing=False,
    sparse_copies=False,
    tensor_steps=False,
)

#: What [`CTC`][ctc_plugin.CTC] uses.
DEFAULT = Speedups()


# ---------------------------------------------------------------------------- compiled sharing
class CompiledSharing:
    """A mode of the spec's sharing compiled by ``torch.compile``: few kernels per layer.

    The spec's formula is out of place and free of host synchronisations, which is what a
    compiler fuses best: the ``"reference"`` formula's some seventy kernel launches per biased
    layer (``benchmarks/bench_ctc.py --launches``) become a few fused ones. Shapes are compiled
    as dynamic, so the layers of a model share their compiled code where they have the same
    rank and statistic dims; compiled code is cached per mode and backend in the process. Past
    dynamo's recompile limit (layers of many forms), the spec runs eagerly, with dynamo's warning.

    Args:
        mode: ``"reference"`` or ``"proportional"``.
        backend: The ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces the
            same graph without generating code, which tests use to check it quickly).
    """

    in_place = False

    def __init__(self, mode: str, backend: str = "inductor") -> None:
        if mode not in ("reference", "proportional"):
            raise ValueError(
                f"only 'reference' and 'proportional' sharing are compiled, not {mode!r}"
            )
        self.name = mode
        self.backend = backend
        self._spec = make_sharing(mode)  # for the forms without a canonical one
        self._add_bias = _compiled_add_bias(mode, backend)

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """``z_k + s_k * b`` for every copy, as a new tensor (the spec's, compiled).

        ``z`` and ``bias`` go to the compiled code in one canonical form, (N, C, groups,
        positions) with the statistics over the positions, so that layers of every rank and
        bias form share a few compiled graphs; forms without one run the spec eagerly.
        """
        canonical = canonical_form(z, bias)
        if canonical is None:
            return self._spec.add_bias(z, bias, layout)
        z_groups, bias_groups = canonical
        return self._add_bias(z_groups, bias_groups, layout).view(z.shape)


def canonical_form(z: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A grouped (N, C, *rest) ``z`` and its bias in the form the compiled sharing takes.

    Statistics over every unit: (N, C, units) and a bias of (n, c, units or 1); statistics over
    trailing dims (a convolution's positions): (N, C, groups, positions) and a bias of
    (n, c, groups, 1). The spec's [`statistic_dims`][ctc_plugin.ctc.sharing.statistic_dims]
    of the result are the same units. ``None`` for other statistic dims, or a ``z`` whose
    memory a view cannot regroup.
    """
    rank = z.dim()
    dims = statistic_dims(bias, rank)
    if rank < 3 or dims != tuple(range(rank - len(dims), rank)):
        return None
    padded = bias.detach().reshape(*([1] * (rank - bias.dim())), *bias.shape)
    leading = padded.shape[:2]
    try:
        if len(dims) == rank - 2:  # every unit: a bias per unit, or one constant
            units = math.prod(z.shape[2:])
            per_unit = math.prod(padded.shape[2:]) > 1
            return (
                z.view(*z.shape[:2], units),
                padded.reshape(*leading, units if per_unit else 1),
            )
        groups = math.prod(z.shape[2 : rank - len(dims)])
        return (
            z.view(*z.shape[:2], groups, math.prod(z.shape[rank - len(dims) :])),
            padded.expand(
                *leading, *z.shape[2 : rank - len(dims)], *padded.shape[-len(dims) :]
            ).reshape(*leading, groups, 1),
        )
    except RuntimeError:  # a view cannot regroup z's memory
        return None


@functools.cache
def _compiled_add_bias(mode: str, backend: str) -> Callable[..., torch.Tensor]:
    """The spec's ``add_bias`` of ``mode`` compiled by ``backend`` (one per process)."""
    # not fullgraph: a model with more layer forms than dynamo's recompile limit runs the
    # spec eagerly past it, with dynamo's warning, instead of failing
    return torch.compile(make_sharing(mode).add_bias, backend=backend, dynamic=True)


__all__ = ["DEFAULT", "SPEC", "CompiledSharing", "Speedups", "canonical_form"]
