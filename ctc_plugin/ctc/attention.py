"""Handlers for products of tensors and attention: the attention probabilities are gates.

In attention, ``softmax(q k^T / sqrt(d)) v``, the queries and keys decide *how* the values are
mixed: CTC takes that decision from the full input, as it takes ReLU patterns. The product of
two input-dependent tensors of which neither is a gate (``q @ k^T``) is computed for the gate
copy only and becomes a *gate-only* tensor ([`GateMark`][ctc_plugin.ctc.rules.GateMark]); what is
computed from it alone (the scaled, biased, masked scores, their softmax) stays gate-only; and
its product with the signal (``attention @ v``) applies the full pass's probabilities to every
copy of the values. Read as a signal instead (factorised or linear attention), the product of
two signals gets its copies by the uniform rule when they are needed
([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]). Any other gate-only tensor that meets
the signal any other way is refused.

Handlers here: ``matmul``/``mm``/``mv``/``bmm``/``@``/``einsum``/``tensordot``
([`matrix_product`][ctc_plugin.ctc.attention.matrix_product],
[`einsum`][ctc_plugin.ctc.attention.einsum],
[`tensordot`][ctc_plugin.ctc.attention.tensordot]), ``baddbmm``/``addmm`` and their kind written out
([`add_matrix_product`][ctc_plugin.ctc.attention.add_matrix_product]),
``scaled_dot_product_attention``
([`scaled_dot_product_attention`][ctc_plugin.ctc.attention.scaled_dot_product_attention]),
``nn.MultiheadAttention``'s ``multi_head_attention_forward``
([`multi_head_attention`][ctc_plugin.ctc.attention.multi_head_attention], decomposed into the
operations above so that its projections' biases are shared like any other).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch
import torch.nn.functional as F

from ctc_plugin.ctc.calls import arg, operation_name
from ctc_plugin.ctc.deferred import Replay, defer
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.rules import GatedPass


def _as_full_pass(ctx: GatedPass, tensor: torch.Tensor) -> torch.Tensor:
    """A gate tensor with the gate copy's value in every copy (gate-only ones already are)."""
    mark = ctx.gate_mark(tensor)
    if mark is None or mark.only:
        return tensor
    return ctx.broadcast_gate(ctx.gate_rows(tensor), mark.origin)


def _product(
    ctx: GatedPass,
    func: Callable,
    operands: list[Any],
    call: Callable[[list[Any]], torch.Tensor],
    check_linear: Callable[[int], None],
    aligned: Callable[[Any, torch.Tensor], bool],
) -> torch.Tensor:
    """A product of ``operands`` (two for matmul, any number for einsum).

    ``aligned(constant, signal)`` tells whether a constant operand's dim 0 meets the signal's
    copies (then its rows must be the same for every copy of an example, see
    [`check_constant`][ctc_plugin.ctc.rules.GatedPass.check_constant]).

    - one propagated signal, the rest constants or gate tensors: linear in the copies (gate
      tensors enter with the full pass's value);
    - no signal but one gate tensor that carries copies (a sigmoid or tanh of the signal), the
      rest constants or gate-only tensors: that tensor is the signal, as a linear layer reads
      it (``sigmoid(h) @ w``; attention probabilities times values ``sigmoid(v)``, as
      `scaled_dot_product_attention` takes them);
    - only gate-only tensors: a gate-only tensor, computed for the gate copy;
    - two or more signals of which none is a gate (queries and keys): a gate-only tensor
      computed for the gate copy, which stands for the product of the signals (its copies
      computed by the uniform rule, `uniform_product`, when the model reads it as a signal:
      [`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]); so does a product of two or more
      gate tensors that carry copies and no signal, which stays a gate where it multiplies the
      signal (as an elementwise product of two such gate tensors does).
    """
    name = operation_name(func)
    signals = [i for i, t in enumerate(operands) if ctx.is_propagated(t) and not ctx.gate_mark(t)]
    carrying = [i for i, t in enumerate(operands) if _carries_copies(ctx, t)]
    readers = signals or carrying

    def check(index: int) -> None:
        check_linear(index)
        for constant in operands:
            if aligned(constant, operands[index]):
                ctx.check_constant(constant, operands[index], name)

    if len(signals) == 1:
        check(signals[0])
        ready = [_as_full_pass(ctx, t) if ctx.gate_mark(t) else t for t in operands]
        return ctx.tag(call(ready))
    if len(readers) == 1:  # a gate tensor that carries copies, read as the signal
        check(readers[0])
        return uniform_product(ctx, call, operands, readers)
    gate_rows = [ctx.gate_rows(t) if ctx.is_propagated(t) else t for t in operands]
    if not readers:  # gate-only operands alone: the gate is theirs, and refusals name its maker
        origin = next(m.origin for t in operands if (m := ctx.gate_mark(t)) is not None)
        return ctx.broadcast_gate(call(gate_rows), origin)
    out = ctx.broadcast_gate(call(gate_rows), name)

    def copies() -> torch.Tensor:
        for index in readers:
            check(index)
        return uniform_product(ctx, call, operands, readers)

    watched = [(t, t._version) for t in operands if ctx.is_propagated(t)]
    return defer(out, Replay(copies, name, watched, gate=not signals), depth=1)


def _carries_copies(ctx: GatedPass, tensor: Any) -> bool:
    """Whether ``tensor`` is a gate tensor whose rows are copies of a signal, read as one.

    Not a gate-only tensor, nor a power of the signal: ``x.pow(2) @ w`` with ``w = 1 / D`` is a
    normalisation's statistic, as ``x.pow(2).mean(-1)`` is (`GateMark.power`).
    """
    mark = ctx.gate_mark(tensor)
    return mark is not None and not mark.only and not mark.power


def uniform_product(
    ctx: GatedPass,
    call: Callable[[list[Any]], torch.Tensor],
    operands: list[Any],
    signals: list[int],
) -> torch.Tensor:
    """A product of several signals, each taking an equal part: the uniform rule.

    Copy ``k`` is the mean, over the signals, of the product with that signal's copy ``k`` and
    every other operand as the full pass has it (the gate copy's value, held fixed): for two,
    ``(a_k b_0 + a_0 b_k) / 2``, as
    [`GatedPass.signal_product`][ctc_plugin.ctc.gate_rules.GateRules.signal_product] computes
    elementwise. Linear in the copies; the gate copy gets the model's product exactly, and
    where each signal's copies add up to its gate copy, so do the product's.
    """
    full = [_as_full_pass(ctx, t) if ctx.gate_mark(t) else t for t in operands]
    others = signals if len(signals) > 1 else []  # one signal: no other to hold fixed
    fixed = {i: ctx.broadcast_gate(ctx.gate_rows(operands[i]), "") for i in others}
    total = None
    for index in signals:  # the signal's own copies (a gate tensor's too), the others fixed
        term = call(
            [operands[j] if j == index else fixed.get(j, full[j]) for j in range(len(full))]
        )
        total = term if total is None else total + term
    return ctx.tag(total / len(signals))


def matrix_product(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``matmul``, ``mm``, ``mv``, ``bmm``, ``@``: linear in a signal; of two signals, a gate."""
    first = args[0]
    # the second operand's keyword: matmul's other=, mm's and bmm's mat2=, mv's vec=
    second = next((kwargs[k] for k in ("other", "mat2", "vec") if k in kwargs), None)
    second = args[1] if len(args) > 1 else second
    if getattr(func, "__name__", "") == "__rmatmul__":
        first, second = second, first

    def check_linear(index: int) -> None:
        signal = (first, second)[index]
        if index == 1 and signal.dim() <= 2:  # (..., k) @ (k, n): the copies would be summed
            raise UnsupportedOperationError(
                operation_name(func), "it multiplies over the dimension that holds the copies"
            )
        if index == 0 and signal.dim() == 1:
            raise UnsupportedOperationError(
                operation_name(func), "it multiplies over the dimension that holds the copies"
            )

    def aligned(constant: Any, signal: torch.Tensor) -> bool:  # batched, same batch dims
        return isinstance(constant, torch.Tensor) and constant.dim() == signal.dim() > 2

    return _product(
        ctx, func, [first, second], lambda ops: torch.matmul(*ops), check_linear, aligned
    )


def add_matrix_product(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``baddbmm``/``addbmm``/``addmm``/``addmv``: ``beta * input + alpha * (m1 @ m2)``.

    The call runs as the model written with ``@``, ``*`` and ``+`` would (``addbmm`` sums the
    products over dim 0, ``.sum(0)``), each step routed by its own rule inside a CTC mode of
    this pass (the row is ``written_out``): ``torch.baddbmm(bias, q, k^T, alpha=scale)`` is
    ``bias + scale * (q @ k^T)``, scores a gate-only tensor (or a deferred product of two
    signals), and ``torch.addmm(b, x, w)`` is a linear layer whose bias is shared, as
    ``x @ w + b`` is. ``beta = 0`` leaves ``input`` out, as torch does (its NaNs too). A step
    the rules refuse is refused naming the call and the step.

    Raises:
        UnsupportedOperationError: ``out_dtype`` (a different accumulation), or a step of the
            written-out form refused.
    """
    from ctc_plugin.ctc.interception import decomposed  # the mode dispatches to this module

    name = operation_name(func)
    base, first, second, beta, alpha = _add_matrix_product_arguments(name, args, kwargs)
    with decomposed(ctx, name):
        product = torch.matmul(first, second)
        if getattr(func, "__name__", "") == "addbmm":
            product = torch.sum(product, 0)
        if alpha != 1:
            product = torch.mul(product, alpha)
        if beta == 0:
            return product
        return torch.add(base if beta == 1 else torch.mul(base, beta), product)


#: The tensor arguments of each ``baddbmm``-like call, by the names torch gives them.
_OPERAND_NAMES = {
    "baddbmm": ("input", "batch1", "batch2"),
    "addbmm": ("input", "batch1", "batch2"),
    "addmm": ("input", "mat1", "mat2"),
    "addmv": ("input", "mat", "vec"),
}


def _add_matrix_product_arguments(
    name: str, args: tuple, kwargs: dict
) -> tuple[Any, Any, Any, Any, Any]:
    """``(input, m1, m2, beta, alpha)`` of a ``baddbmm``-like call.

    Also of the deprecated signatures torch still accepts, with the scales among the tensors
    (``addmm(beta, input, alpha, mat1, mat2)``, ``input.addmm(beta, mat1, mat2)``): the numbers
    are ``beta`` and ``alpha`` in that order, the tensors ``input, m1, m2``.
    """
    if any(isinstance(value, torch.dtype) for value in args) or "out_dtype" in kwargs:
        raise UnsupportedOperationError(
            name,
            "out_dtype computes the product in another dtype than its operands'; cast the "
            "operands to that dtype before the call instead",
        )
    numbers = [value for value in args if isinstance(value, Number)]
    tensors = [value for value in args if not isinstance(value, Number)]
    names = _OPERAND_NAMES[name.rsplit(".", 1)[-1]]
    base, first, second = (arg(tuple(tensors), kwargs, i, key) for i, key in enumerate(names))
    beta = numbers[0] if numbers else kwargs.get("beta", 1)
    alpha = numbers[1] if len(numbers) > 1 else kwargs.get("alpha", 1)
    return base, first, second, beta, alpha


def tensordot(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``tensordot``: written out as the ``einsum`` it computes, routed by that rule.

    ``torch.tensordot(a, b, dims)`` sums ``a``'s dims ``dims[0]`` against ``b``'s ``dims[1]``
    (an integer ``n``: ``a``'s last ``n`` against ``b``'s first ``n``) and keeps ``a``'s other
    dims, then ``b``'s, in order: the ``einsum`` with those letters. So a signal ``a`` whose
    copies' dim is not summed keeps its copies leading the output (``tensordot(h, w, 1)`` is a
    linear layer without bias), and a signal ``b`` is refused as ``einsum`` refuses it.

    Raises:
        UnsupportedOperationError: ``out=`` (the result would be written into a tensor CTC
            does not carry), or the written-out ``einsum`` refused.
    """
    first, second = args[0], arg(args, kwargs, 1, "b")
    dims = arg(args, kwargs, 2, "dims", 2)
    name = operation_name(func)
    if kwargs.get("out") is not None:
        raise UnsupportedOperationError(name, "out= writes the result into another tensor")
    equation = _tensordot_equation(first.dim(), second.dim(), dims)
    subscripts, output = equation.split("->")
    for letters, operand in zip(subscripts.split(","), (first, second), strict=True):
        if ctx.is_propagated(operand) and letters[:1] != output[:1]:
            raise UnsupportedOperationError(
                name,
                "its output does not start with the batch dim of the input-dependent operand "
                "(the output holds the first operand's kept dims, then the second's): pass "
                "that tensor first and keep its dim 0, then permute the result",
            )
    from ctc_plugin.ctc.interception import decomposed  # the mode dispatches to this module

    with decomposed(ctx, name):
        return torch.einsum(equation, first, second)


def _tensordot_equation(first_dims: int, second_dims: int, dims: Any) -> str:
    """The ``einsum`` equation of ``tensordot`` of tensors of these ranks over ``dims``."""
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        summed_first = list(range(first_dims - dims, first_dims))
        summed_second = list(range(dims))
    else:
        summed_first, summed_second = ([d] if isinstance(d, int) else list(d) for d in dims)
    summed_first = [d % first_dims for d in summed_first]
    summed_second = [d % second_dims for d in summed_second]
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    first = [next(letters) for _ in range(first_dims)]
    second = [next(letters) for _ in range(second_dims)]
    for a, b in zip(summed_first, summed_second, strict=True):
        second[b] = first[a]
    kept = [c for i, c in enumerate(first) if i not in summed_first]
    kept += [c for i, c in enumerate(second) if i not in summed_second]
    return f"{''.join(first)},{''.join(second)}->{''.join(kept)}"


def einsum(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``einsum``: as `matrix_product`; the signal's first index must lead the output."""
    equation, operands = args[0], list(args[1:])
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = list(operands[0])
    inputs, _, output = equation.replace(" ", "").partition("->")
    subscripts = inputs.split(",")

    def check_linear(index: int) -> None:
        letters = subscripts[index]
        if letters.startswith(".") or output.startswith("."):
            raise UnsupportedOperationError(
                operation_name(func),
                f"{equation!r} starts with an ellipsis ('...'), which hides the copies' index "
                "(the batch index); write it out first, as in 'bij,bjk->bik'",
            )
        if not output or letters[:1] != output[:1]:
            raise UnsupportedOperationError(
                operation_name(func),
                f"the copies' index {letters[:1]!r} of operand {index} does not lead the "
                f"output {output!r} (give the output explicitly, batch index first)",
            )

    def aligned(constant: Any, signal: torch.Tensor) -> bool:  # the copies' index leads both
        index = next(i for i, t in enumerate(operands) if t is signal)
        mine = next((i for i, t in enumerate(operands) if t is constant), None)
        return mine is not None and subscripts[mine][:1] == subscripts[index][:1] != "."

    if not output:
        check_linear(0)  # an implicit output is refused: CTC cannot tell where the copies go
    return _product(
        ctx, func, operands, lambda ops: torch.einsum(equation, *ops), check_linear, aligned
    )


def scaled_dot_product_attention(
    ctx: GatedPass, func: Callable, args: tuple, kwargs: dict
) -> torch.Tensor:
    """``scaled_dot_product_attention``: the full pass's probabilities applied to each copy.

    The probabilities are computed from the full pass's query, key and mask (the gate copy's
    rows of a propagated one; a constant as it is, a learned ``(1, Q, D)`` query broadcast over
    the batch, or with the gate copy's rows where it has one row per copy, a memory expanded to
    the batch): a gate-only tensor, or a constant where none of query, key and mask depends on
    the input. A propagated value is linear in the copies; a constant value gives the full pass's
    output, a gate-only tensor.
    """
    query, key, value = (
        args[0],
        arg(args, kwargs, 1, "key"),
        arg(args, kwargs, 2, "value"),
    )
    mask = arg(args, kwargs, 3, "attn_mask")
    dropout = arg(args, kwargs, 4, "dropout_p", 0.0)
    causal = arg(args, kwargs, 5, "is_causal", False)
    scale = kwargs.get("scale")
    if dropout:
        raise UnsupportedOperationError(
            operation_name(func), "attention dropout is random; call model.eval() first"
        )
    name = operation_name(func)
    if kwargs.get("enable_gqa", False):
        key, value = (_shared_heads(ctx, t, query, name) for t in (key, value))
    reference = next(t for t in (query, key, value, mask) if ctx.is_propagated(t))

    def full(operand: Any) -> Any:
        return ctx.full_pass_operand(operand, reference)

    if not any(ctx.is_propagated(t) for t in (query, key, mask)):  # constant probabilities
        for constant in (query, key, mask):  # rows per copy: alike (none taken out of torch)
            ctx.check_constant(constant, value, name)
        probabilities = _attention_probabilities(query, key, mask, causal, scale)
        return _attend(ctx, probabilities, value, name)
    full_probabilities = ctx.call_on_full_pass(
        lambda q, k, m: _attention_probabilities(q, k, m, causal, scale),
        (full(query), full(key), full(mask)),
        {},
        reference,
        name,
    )
    if not ctx.is_propagated(value):
        return ctx.broadcast_gate(torch.matmul(full_probabilities, full(value)), name)
    return _attend(ctx, ctx.broadcast_gate(full_probabilities, name), value, name)


def _shared_heads(ctx: GatedPass, t: Any, query: torch.Tensor, name: str) -> Any:
    """A grouped-query key or value with its heads repeated to the query's (``enable_gqa``).

    As ``scaled_dot_product_attention`` repeats them: each of the key's heads serves
    ``query heads / key heads`` consecutive query heads. A propagated operand keeps its copies
    and marks; one whose heads lie along the copies' dim (unbatched) is refused.
    """
    if not isinstance(t, torch.Tensor) or t.dim() < 3 or t.shape[-3] == query.shape[-3]:
        return t
    heads = t.dim() - 3
    if ctx.is_propagated(t) and ctx.copy_axis(t) == heads:
        raise UnsupportedOperationError(name, "its heads lie along the copies' dim (unbatched)")
    repeated = t.repeat_interleave(query.shape[-3] // t.shape[-3], dim=heads)
    return ctx.tag_like(repeated, t) if ctx.is_propagated(t) else repeated


def _attend(
    ctx: GatedPass, probabilities: torch.Tensor, value: torch.Tensor, name: str
) -> torch.Tensor:
    """The full pass's probabilities (a constant, or a gate) times a propagated value.

    Linear in the value's copies: a gate tensor that is also a signal (a sigmoid or tanh of the
    signal, its copies rescaled) is mixed copy by copy, as a linear layer reads it; a gate-only
    value (every copy the full pass's) gives a gate-only tensor.
    """
    out = ctx.tag(torch.matmul(probabilities, value))
    mark = ctx.gate_mark(value)
    return ctx.mark_gate(out, name, only=True) if mark is not None and mark.only else out


def _attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` as ``scaled_dot_product_attention`` computes it."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if causal:
        length, source = scores.shape[-2:]
        allowed = torch.ones(length, source, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    return torch.softmax(scores, dim=-1)


def multi_head_attention(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``nn.MultiheadAttention`` (``F.multi_head_attention_forward``), decomposed.

    The projections run as ``F.linear`` calls (their biases shared like any other), the attention as
    [`scaled_dot_product_attention`][ctc_plugin.ctc.attention.scaled_dot_product_attention], all
    through the same rules: the decomposition runs inside a CTC mode of this pass. The learned
    key and value rows of ``add_bias_kv`` (``bias_k``, ``bias_v``) and the zero rows of
    ``add_zero_attn`` are appended to every sequence's keys and values with ``torch.cat``, as
    torch appends them: constants concatenated to the signal, so a value row is a bias shared
    among the copies (as a class token is) and a key row takes part in the full pass's
    probabilities, a gate. Returns the output in the sequence-first layout of the torch
    function, and the attention weights (a gate-only tensor) when asked for.

    Raises:
        UnsupportedOperationError: ``static_k``/``static_v`` (keys and values given per
            example and head, sized for the model's batch), attention dropout in training.
        ValueError: ``bias_k`` without ``bias_v`` or the other way round, as torch refuses it.
    """
    from ctc_plugin.ctc.interception import decomposed  # the mode dispatches to this module

    names = (
        "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
        "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
        "out_proj_bias",
    )  # fmt: skip
    call = {**dict(zip(names, args)), **kwargs}
    static = [option for option in ("static_k", "static_v") if call.get(option) is not None]
    if static:
        raise UnsupportedOperationError(
            operation_name(func),
            f"{' and '.join(static)} hold keys or values per example and head, sized for the "
            "model's batch (N * num_heads rows), which the feature copies of the batch do not "
            "follow; compute them in the model from its input and pass them as key and value",
        )
    if call.get("training", True) and call.get("dropout_p", 0.0):
        raise UnsupportedOperationError(
            operation_name(func), "attention dropout is random; call model.eval() first"
        )
    with decomposed(ctx, operation_name(func)):
        return _decomposed_attention(call)


def _decomposed_attention(call: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention from ``F.linear``, reshapes and ``scaled_dot_product_attention``."""
    heads = call["num_heads"]
    query, key, value = (call[n].transpose(0, 1) for n in ("query", "key", "value"))
    if call.get("use_separate_proj_weight", False):
        weights = (call["q_proj_weight"], call["k_proj_weight"], call["v_proj_weight"])
    else:
        weights = call["in_proj_weight"].chunk(3)
    biases = (None,) * 3 if call["in_proj_bias"] is None else call["in_proj_bias"].chunk(3)
    q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))
    k, v, appended = _appended_rows(call, k, v)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    mask = _attention_mask(call, q, appended)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
    out = F.linear(
        attended.transpose(1, 2).flatten(2), call["out_proj_weight"], call["out_proj_bias"]
    )
    weights_out = None
    if call.get("need_weights", True):
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores + mask
        weights_out = torch.softmax(scores, dim=-1)
        if call.get("average_attn_weights", True):
            weights_out = weights_out.mean(dim=1)
    return out.transpose(0, 1), weights_out


def _appended_rows(
    call: dict, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The projected ``(N, S, E)`` keys and values with the rows torch appends to each sequence.

    ``add_bias_kv``: the learned ``bias_k`` and ``bias_v`` (``(1, 1, E)``), then
    ``add_zero_attn``: a row of zeros; concatenated along the sequence (constants, shared
    among the copies as biases). Returns them and how many rows were appended (the masks get
    as many columns, not masked).
    """
    appended = 0
    bias_k, bias_v = call.get("bias_k"), call.get("bias_v")
    if (bias_k is None) != (bias_v is None):  # as torch checks it
        raise ValueError(
            "multi_head_attention_forward: bias_k and bias_v are given together or not at all "
            f"(bias_k is {'None' if bias_k is None else 'set'}, bias_v "
            f"{'None' if bias_v is None else 'set'})"
        )
    if bias_k is not None:
        k = torch.cat([k, bias_k.expand(k.shape[0], -1, -1)], dim=1)
        v = torch.cat([v, bias_v.expand(v.shape[0], -1, -1)], dim=1)
        appended += 1
    if call.get("add_zero_attn"):
        k = torch.cat([k, k.new_zeros(k.shape[0], 1, k.shape[2])], dim=1)
        v = torch.cat([v, v.new_zeros(v.shape[0], 1, v.shape[2])], dim=1)
        appended += 1
    return k, v, appended


def _attention_mask(call: dict, q: torch.Tensor, appended: int = 0) -> torch.Tensor | None:
    """The attention mask and key padding mask as one additive float mask (or ``None``).

    Each gets ``appended`` columns of zeros (keys appended by ``add_bias_kv`` and
    ``add_zero_attn``, which every query may attend to, as torch pads them).
    """
    mask = call.get("attn_mask")
    padding = call.get("key_padding_mask")
    if call.get("is_causal", False) and mask is None:
        raise UnsupportedOperationError(
            "torch.nn.functional.multi_head_attention_forward",
            "is_causal without an attn_mask",
        )
    if mask is not None and mask.dim() == 3:
        raise UnsupportedOperationError(
            "torch.nn.functional.multi_head_attention_forward",
            f"a 3-d attn_mask {tuple(mask.shape)} holds one mask per example and head, whose "
            "rows do not follow the feature copies of the batch; give a 2-d (L, S) attn_mask, "
            "or the padding as key_padding_mask (N, S), which is repeated for every copy",
        )
    total = None
    for part, shape in ((mask, None), (padding, "padding")):
        if part is None:
            continue
        if part.dtype == torch.bool:
            # on the mask's device, as torch builds it (a CUDA mask meets no CPU tensor)
            part = torch.zeros_like(part, dtype=q.dtype).masked_fill(part, float("-inf"))
        if appended:
            part = F.pad(part, (0, appended))
        if shape == "padding":  # (N, S) -> (N, 1, 1, S)
            part = part[:, None, None, :]
        total = part if total is None else total + part
    return total
