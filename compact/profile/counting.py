"""Counting parameters and multiply-accumulates (MACs).

Two counters that agree on convolutions, matrix products and attention:

- :func:`conv_linear_macs`: the MACs of every convolution, matrix product and attention operator of one
  eager forward, counted at the ATen level (a ``TorchDispatchMode``), so a functional call
  (``F.linear`` on a bare weight, ``q @ k.T``, fused attention) counts as much as a module does; fast, and
  what the pruning literature reports as "FLOPs" (one fused multiply-add = one MAC). The pruning target
  search calls it many times. An operator of that kind it has no formula for (e.g. an FFT, which is not a
  product of two tensors) is an error, never a silent zero.
- :func:`count`: fvcore's ``FlopCountAnalysis`` (a traced forward; fvcore counts one fused multiply-add as
  one flop, i.e. MACs) for the total, including normalisation and pooling layers it knows, plus the list of
  operators it skipped, so that a count is never silently low. compact adds handles for fused attention
  (``scaled_dot_product_attention``, and ``_native_multi_head_attention``: ``nn.MultiheadAttention``'s
  inference fast path, projections included) and recurrent layers, which fvcore skips, and for composite
  products (``matmul``, ``einsum``, ``tensordot``, ``bilinear``, ``cdist``, ...), which fvcore skips or miscounts:
  each traced call is replayed on meta tensors under the ATen counter, so the two counters agree on them by
  construction.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compact.errors import CompactError

#: ATen operators of that kind (by name) that :func:`conv_linear_macs` must count or refuse: a convolution, a
#: matrix or matrix-vector product, or attention
_HEAVY_OP = re.compile(
    r"(^|_)conv(olution|_|\d|$)|(^|_)(mm|bmm|addmm|baddbmm|addbmm|addmv|mv|dot|vdot|matmul|einsum|linear)(_|$)"
    r"|attention|multi_head|rnn|lstm|gru|trilinear|cdist|euclidean_dist|(^|_)fft(_|$)|stft"
)


def attention_macs(query: Sequence[int], key: Sequence[int], value: Sequence[int]) -> int:
    """MACs of scaled dot-product attention on shapes (..., L, E), (..., S, E), (..., S, Ev): the scores
    (L x S x E) and their product with the values (L x S x Ev) for each of the leading (batch, head) dims;
    grouped-query key/value heads are broadcast to the query's."""
    *lead, length, e = query
    s, ev = key[-2], value[-1]
    return math.prod(lead) * length * s * (e + ev)


def mha_macs(query: Sequence[int], key: Sequence[int], embed: int, proj_out: int) -> int:
    """MACs of ``nn.MultiheadAttention``'s fused inference op (batch-first (B, L, E) query, (B, S, E) key and
    value): the q, k and v projections, attention over all heads (E split into heads leaves the products'
    total unchanged) and the output projection."""
    *lead, length, _ = query
    s = key[-2]
    n = math.prod(lead)
    return n * (length * embed * embed + 2 * s * embed * embed + 2 * length * s * embed + length * embed * proj_out)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(args: tuple, out: Any) -> int:
    """(input, weight, bias, stride, padding, dilation, transposed, ...): a convolution spends
    (in_channels / groups) * kernel MACs per output element; a transposed one (weight (in, out / groups, k...))
    spends (out_channels / groups) * kernel per input element."""
    transposed = len(args) > 6 and args[6] is True
    return (args[0] if transposed else out).numel() * args[1][0].numel()


def _mm(args: tuple, out: Any) -> int:  # (n, k) @ (k, m)
    a, b = args[0].shape, args[1].shape
    return a[0] * a[1] * b[1]


def _addmm(args: tuple, out: Any) -> int:  # bias + (n, k) @ (k, m)
    return _mm(args[1:], out)


def _bmm(args: tuple, out: Any) -> int:  # (b, n, k) @ (b, k, m)
    a, b = args[0].shape, args[1].shape
    return a[0] * a[1] * a[2] * b[2]


def _baddbmm(args: tuple, out: Any) -> int:  # bias + (b, n, k) @ (b, k, m), summed over b or not (addbmm)
    return _bmm(args[1:], out)


def _mv(args: tuple, out: Any) -> int:  # (n, k) @ (k,)
    return args[0].shape[0] * args[0].shape[1]


def _addmv(args: tuple, out: Any) -> int:  # bias + (n, k) @ (k,)
    return _mv(args[1:], out)


def _dot(args: tuple, out: Any) -> int:  # (k,) . (k,)
    return args[0].shape[0]


def rnn_macs(steps: int, weight_shapes: Sequence[Sequence[int]]) -> int:
    """MACs of a recurrent layer (RNN, GRU, LSTM, any number of layers and directions, with or without a
    projection) over ``steps`` time steps of the whole batch: every weight matrix (input-hidden,
    hidden-hidden, projection) multiplies one vector per step, so each step costs the sum of their sizes.
    The gates' elementwise products are not multiply-accumulates of a product and are not counted."""
    return steps * sum(math.prod(s) for s in weight_shapes if len(s) == 2)


def _rnn_layer(args: tuple, out: Any) -> int:
    """A fused recurrent layer: oneDNN's ``mkldnn_rnn_layer`` (input, w_ih, w_hh, ...), cuDNN's
    ``_cudnn_rnn`` and MIOpen's ``miopen_rnn`` (input, [weights], ...); the input is (steps..., features)."""
    weights = args[1] if isinstance(args[1], list | tuple) else args[1:3]
    steps = math.prod(args[0].shape[:-1])
    return rnn_macs(steps, [list(w.shape) for w in weights if isinstance(w, torch.Tensor)])


def _none(args: tuple, out: Any) -> int:
    """An operator of a recurrent layer that multiplies nothing (a fused cell's gates, computed from
    products that are counted on their own; a weight buffer's layout)."""
    return 0


def _cdist(args: tuple, out: Any) -> int:
    """``torch.cdist`` (x1 (..., P, M), x2 (..., R, M) -> (..., P, R)): one MAC per output element and
    feature, M per distance, whichever kernel runs: ``_euclidean_dist`` (p = 2, a product x1 @ x2^T; the
    squared norms, P + R per batch, are not counted) or ``_cdist_forward`` (one |x - y|^p accumulated per
    feature)."""
    return out.numel() * args[0].shape[-1]


def _trilinear(args: tuple, out: Any) -> int:
    """``F.bilinear``'s kernel (i1, i2, i3, expand1, expand2, expand3, sumdim, ...): the three inputs, each
    unsqueezed at its ``expand`` dims, are multiplied over their broadcast shape and summed over ``sumdim``;
    one MAC per element of that product (a bilinear layer: batch x out x in1 x in2)."""
    shapes = []
    for tensor, expand in zip(args[:3], args[3:6], strict=True):
        shape = list(tensor.shape)
        for dim in sorted(expand):
            shape.insert(dim, 1)
        shapes.append(shape)
    return math.prod(torch.broadcast_shapes(*shapes))


def _sdpa(args: tuple, out: Any) -> int:
    return attention_macs(*(list(t.shape) for t in args[:3]))


def _mha(args: tuple, out: Any) -> int:  # query, key, value, embed_dim, num_heads, qkv_w, qkv_b, proj_w, ...
    return mha_macs(list(args[0].shape), list(args[1].shape), int(args[3]), args[7].shape[0])


#: ATen operators (by name) and their MACs from a call's arguments and (first) output
_FORMULAS = {
    "convolution": _conv,
    "_convolution": _conv,
    "mm": _mm,
    "addmm": _addmm,
    "bmm": _bmm,
    "baddbmm": _baddbmm,
    "addbmm": _baddbmm,
    "mv": _mv,
    "addmv": _addmv,
    "dot": _dot,
    "vdot": _dot,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_flash_attention": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa,
    "_scaled_dot_product_cudnn_attention": _sdpa,
    "_native_multi_head_attention": _mha,
    "_trilinear": _trilinear,
    "_euclidean_dist": _cdist,
    "_cdist_forward": _cdist,
    "mkldnn_rnn_layer": _rnn_layer,
    "_cudnn_rnn": _rnn_layer,
    "miopen_rnn": _rnn_layer,
    "_thnn_fused_lstm_cell": _none,
    "_thnn_fused_gru_cell": _none,
    "_cudnn_rnn_flatten_weight": _none,
}


class _MacCounter(TorchDispatchMode):
    """Sums the MACs of the operators in :data:`_FORMULAS` that a forward calls, and collects the names of
    convolution, matrix product or attention operators it has no formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.unknown: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        formula = _FORMULAS.get(name)
        if formula is not None:
            self.macs += int(formula(args, out[0] if isinstance(out, tuple | list) else out))
        elif _HEAVY_OP.search(name):
            self.unknown.add(f"{func.namespace}.{name}")
        return out


@torch.no_grad()
def conv_linear_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """MACs of every convolution, matrix product and attention operator for one input of ``input_size``
    (C, H, W), eval mode. Raises :class:`CompactError` naming an operator of that kind it cannot count."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = _MacCounter()
    try:
        with counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    if counter.unknown:
        raise CompactError(
            f"cannot count the MACs of {', '.join(sorted(counter.unknown))} in {type(model).__name__}: a MACs "
            "figure (or a pruning target) would leave it out; counted are convolutions, matrix products and "
            "attention (scaled_dot_product_attention, nn.MultiheadAttention)"
        )
    return counter.macs


@dataclass
class Counts:
    """``macs``: fvcore's total; ``macs_conv_linear``: convolutions and matrix products only."""

    params: int
    macs: int
    macs_conv_linear: int
    by_operator: dict[str, int] = field(default_factory=dict)
    skipped_ops: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def count(model: nn.Module, input_size: Sequence[int] | None = None, inputs: tuple[torch.Tensor, ...] = ()) -> Counts:
    """Parameters and MACs of ``model`` (eval mode) with fvcore, for one input of ``input_size`` (C, H, W),
    or for the given example ``inputs`` (a model taking several tensors, e.g. a cascade segment)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = tuple(inputs) if inputs else (torch.zeros(1, *input_size, device=device),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # import and tracer warnings; skipped operators are reported below
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, args)
            analysis.set_op_handle(
                "aten::scaled_dot_product_attention", _fvcore_sdpa, "aten::_native_multi_head_attention", _fvcore_mha
            )
            analysis.set_op_handle(*(x for op in _FVCORE_PRODUCTS for x in (f"aten::{op}", _fvcore_composite(op))))
            analysis.set_op_handle(*(x for op in RECURRENT for x in (f"aten::{op}", _fvcore_rnn)))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            by_op = dict(analysis.by_operator())
            skipped = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    conv_linear = sum(v for k, v in by_op.items() if any(k.startswith(op) for op in _CONV_LINEAR_OPS))
    return Counts(param_count(model), int(sum(by_op.values())), int(conv_linear), by_op, skipped)


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise CompactError("fvcore traced a product operator without tensor shapes; cannot count its MACs")
    return list(shape)


def _fvcore_sdpa(inputs: list[Any], outputs: list[Any]) -> int:
    return attention_macs(_shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2]))


def _fvcore_mha(inputs: list[Any], outputs: list[Any]) -> int:
    qkv_weight, proj_weight = _shape(inputs[5]), _shape(inputs[7])
    return mha_macs(_shape(inputs[0]), _shape(inputs[1]), qkv_weight[1], proj_weight[0])


def _meta_argument(name: str, value: Any) -> Any:
    """A traced argument of ``aten::<name>`` for a replay on meta tensors: a tensor, a list of tensors, or a
    constant (also a list of constants)."""
    node = value.node()
    if value.type().kind() == "TensorType":  # of the traced dtype: a packed sequence's batch sizes are int64
        return torch.empty(_shape(value), dtype=value.type().dtype() or torch.float32, device="meta")
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_meta_argument(name, v) for v in node.inputs()]
    raise CompactError(f"cannot count the MACs of aten::{name}: an argument of it is computed in the trace")


def _fvcore_composite(name: str):
    """An fvcore handle for ``aten::<name>``: the call is replayed on meta tensors (no data, no memory) of
    the traced shapes, with the traced constant arguments, under :class:`_MacCounter`, so fvcore's count is
    that of the products the eager call runs (a recurrent cell: each weight matrix once); an argument the
    trace does not hold as a constant is an error, never a zero."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        args = [_meta_argument(name, value) for value in inputs]
        packet = getattr(torch.ops.aten, name)
        failure = "no overload of it takes these arguments"
        for overload in packet.overloads():  # the traced node names no overload: the first that takes these
            op = getattr(packet, overload)
            schema = op._schema.arguments
            if len(schema) != len(args):
                continue
            positional = [a for a, s in zip(args, schema, strict=True) if not s.kwarg_only]
            keywords = {s.name: a for a, s in zip(args, schema, strict=True) if s.kwarg_only}
            counter = _MacCounter()
            try:
                with counter:
                    op(*positional, **keywords)
            except (RuntimeError, TypeError) as exc:
                failure = " ".join(str(exc).split())[:200]
                continue
            return counter.macs
        raise CompactError(f"cannot count the MACs of aten::{name}: replaying it failed ({failure})")

    return handle


def _fvcore_rnn(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``, padded or packed (a packed batch cannot be
    replayed on meta tensors: its step sizes are data): :func:`rnn_macs` of the 2-D tensors among the
    arguments after the input, in lists or not (hidden states are 3-D, batch sizes 1-D)."""
    weights = []
    for value in inputs[1:]:
        node = value.node()
        for v in list(node.inputs()) if node.kind() == "prim::ListConstruct" else [value]:
            if v.type().kind() == "TensorType" and len(shape := _shape(v)) == 2:
                weights.append(shape)
    return rnn_macs(math.prod(_shape(inputs[0])[:-1]), weights)


#: torch's recurrent layers (``aten::<name>`` and ``aten::<name>_cell``)
RECURRENT = ("lstm", "gru", "rnn_tanh", "rnn_relu")

#: composite product operators that fvcore miscounts (matmul: fails on a 1-D operand and leaves out the
#: batch of a broadcast second operand; einsum: rounded to numpy's four printed digits) or skips (the others);
#: compact counts each by replaying it on meta tensors (:func:`_fvcore_composite`)
_FVCORE_PRODUCTS = (
    "matmul",
    "einsum",
    "mv",
    "addmv",
    "dot",
    "vdot",
    "baddbmm",
    "addbmm",
    "tensordot",
    "inner",
    "linalg_multi_dot",
    "chain_matmul",
    "bilinear",
    "cdist",
    *(f"{op}_cell" for op in RECURRENT),
)

#: fvcore operator names (prefixes) that are convolutions, matrix products or attention
_CONV_LINEAR_OPS = (
    "conv",
    "linear",
    "addmm",
    "bmm",
    "scaled_dot_product",
    "_native_multi_head",
    *RECURRENT,
    *_FVCORE_PRODUCTS,
)
