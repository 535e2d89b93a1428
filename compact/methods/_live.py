"""The mechanism behind MW-BP's Eq. 10: backward passes over one shared forward that see updated weights.

MW-BP runs one forward, then for each loss ``i`` a backward and an optimizer step. Eq. 10 asks that the
``i``-th backward propagate input gradients through the parameters *as updated by the previous i-1 steps*
(``T_j(U_j^i)``), while weight gradients are formed from the features of the *single shared forward*
(``dxi_i/dU_l = dxi_i/dx_{l+1} * dx_{l+1}/dU_l`` with the stored ``x_l``).

PyTorch's autograd saves, for each operation, the tensors its backward needs: activations (the stored
features) and parameters (e.g. a convolution's weight, a BatchNorm's scale, ``weight.t()`` of a linear
layer). :func:`live_parameters` installs ``torch.autograd.graph.saved_tensors_hooks`` for the shared
forward that treat the two kinds differently:

- a saved tensor that *is* a parameter, or a view of one (same storage), is unpacked as the parameter's
  current value. Optimizer steps update parameters in place, so the next backward reads ``U^i``: exactly
  Eq. 10. This is also what the authors' PyTorch 0.3 code did implicitly.
- every other saved tensor (activations, BatchNorm batch statistics, masks) is kept as saved, and its
  version counter is checked on unpack, so a genuine in-place modification of a feature between forward
  and backward still raises, as autograd's own check would.
- a saved tensor that is a dtype cast of a parameter (autocast's low-precision weight copies), or a view
  of such a cast (``w_bf16.t()`` of a linear layer), is unpacked as the same cast of the parameter's
  *current* value (and the same view of it): backward ``i`` runs through ``U^i`` in the precision autocast
  chose, so MW-BP stays exact under mixed precision.
- any other saved tensor that requires grad but does not depend on the input batch is a value *computed
  from* parameters (a standardized weight). Its stored value would be the forward-time weight, silently
  breaking Eq. 10, so it is refused with :class:`NonLiveWeightError`.
  To tell activations from such values, the input batch is made to require grad during the forward;
  backward passes name their ``inputs`` so no gradient is ever computed for it.

Rejected alternatives, each a different algorithm: ``backward(retain_graph=True)`` + ``step()`` + backward
raises "modified by an inplace operation"; detaching features between segments cuts deep losses off
shallow layers; computing every gradient before updating is Joint BP (Remark 1);
``torch.autograd.graph.allow_mutation_on_saved_tensors`` clones saved parameters before the update and
so backpropagates through the *old* weights; returning every saved tensor by reference would hide
in-place bugs on activations.

Double backward (``create_graph=True``) through a live graph is not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from compact.errors import CompactError

_FLAG = "compact_depends_on_input"


class NonLiveWeightError(CompactError):
    """A value derived from parameters was saved for backward; MW-BP could not use its updated value."""


class SavedTensorModifiedError(RuntimeError):
    """An activation saved for backward was modified in place after the shared forward."""


class _Param:
    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor  # a detached alias of the parameter (or of its view): same storage


class _Cast:
    __slots__ = ("param", "dtype", "view")

    def __init__(self, param: torch.Tensor, dtype: torch.dtype, view: tuple | None) -> None:
        self.param = param  # detached alias of the parameter
        self.dtype = dtype
        self.view = view  # (size, stride, offset) of a view of the cast, or None for the cast itself

    def value(self) -> torch.Tensor:
        cast = self.param.to(self.dtype)
        if self.view is None:
            return cast
        size, stride, offset = self.view
        return cast.as_strided(size, stride, cast.storage_offset() + offset)


def _cast_of_parameter(t: torch.Tensor, storages: set[int]) -> _Cast | None:
    """A :class:`_Cast` if ``t`` is a dtype cast of a parameter in ``storages`` (or a view of one)."""
    base = t._base if t._is_view() and t._base is not None else t
    fn = base.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return None
    sources = [f for f, _ in fn.next_functions if f is not None]
    if len(sources) != 1 or type(sources[0]).__name__ != "AccumulateGrad":
        return None
    param = sources[0].variable
    if param.untyped_storage().data_ptr() not in storages or base.shape != param.shape or base.dtype == param.dtype:
        return None
    if base.stride() != param.stride():
        return None  # a cast that changed the memory layout: not rebuilt by a plain .to(dtype)
    view = None if base is t else (tuple(t.size()), tuple(t.stride()), t.storage_offset() - base.storage_offset())
    return _Cast(param.detach(), base.dtype, view)


class _Saved:
    __slots__ = ("tensor", "version", "origin")

    def __init__(self, tensor: torch.Tensor, version: int, origin: str) -> None:
        self.tensor = tensor  # detached alias: shares storage and version counter, holds no graph
        self.version = version
        self.origin = origin


def _depends_on_input(grad_fn, batch: torch.Tensor) -> bool:
    """Whether the autograd node ``grad_fn`` has the input ``batch`` among its ancestors.

    Iterative post-order walk, memoised in each node's ``metadata`` so a forward is walked once overall.
    """
    stack = [(grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if _FLAG in node.metadata:
            continue
        parents = [p for p, _ in node.next_functions if p is not None]
        if expanded:
            node.metadata[_FLAG] = getattr(node, "variable", None) is batch or any(p.metadata[_FLAG] for p in parents)
        else:
            stack.append((node, True))
            stack.extend((p, False) for p in parents if _FLAG not in p.metadata)
    return grad_fn.metadata[_FLAG]


def _source_parameters(grad_fn, names: dict[int, str]) -> list[str]:
    """Names of the parameters (leaves of the autograd graph) that ``grad_fn``'s value is computed from."""
    found: list[str] = []
    seen: set[int] = set()
    stack = [grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.append(names.get(id(variable), f"an unnamed {tuple(variable.shape)} tensor"))
        stack.extend(p for p, _ in node.next_functions if p is not None)
    return sorted(set(found))


@contextlib.contextmanager
def live_parameters(
    parameters: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]], batch: torch.Tensor
) -> Iterator[None]:
    """Record a forward whose later backward passes read ``parameters`` (tensors, or ``(name, tensor)``
    pairs, whose names a refusal then cites) at their current values.

    ``batch`` must be the forward's input and must require grad (see the module docstring).
    """
    if not batch.requires_grad or batch.grad_fn is not None:
        raise ValueError("live_parameters needs the input batch as a leaf that requires grad")
    named = [item if isinstance(item, tuple) else ("", item) for item in parameters]
    storages = {p.untyped_storage().data_ptr() for _, p in named}
    names = {id(p): name for name, p in named if name}

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() in storages:
            return _Param(t.detach())
        cast = _cast_of_parameter(t, storages) if t.requires_grad else None
        if cast is not None:
            return cast
        if t.requires_grad and t.grad_fn is not None and not _depends_on_input(t.grad_fn, batch):
            sources = _source_parameters(t.grad_fn, names)
            shown = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
            raise NonLiveWeightError(
                f"MW-BP cannot be exact here: a tensor of shape {tuple(t.shape)} computed from {shown} "
                f"(by {type(t.grad_fn).__name__}) is saved for backward, so later backward passes would use "
                "its forward-time value instead of the updated weights (weight standardization or "
                "reparametrization, or a position table resized in the forward, as in MViTv2). Train it "
                "with --method naive-mwbp (one forward per loss: exact, slower), or use plain weights."
            )
        origin = type(t.grad_fn).__name__ if t.grad_fn is not None else "input or buffer"
        return _Saved(t.detach(), t._version, origin)

    def unpack(packed):
        if isinstance(packed, _Param):
            return packed.tensor
        if isinstance(packed, _Cast):
            return packed.value()
        if packed.tensor._version != packed.version:
            raise SavedTensorModifiedError(
                f"a tensor of shape {tuple(packed.tensor.shape)} saved for backward (output of "
                f"{packed.origin}) was modified by an inplace operation after the shared forward: it is at "
                f"version {packed.tensor._version}, expected version {packed.version}"
            )
        return packed.tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def refuse_compiled(module: nn.Module) -> None:
    """Raise if ``module`` or a submodule is compiled: compiled graphs keep copies of the weights."""
    for name, m in module.named_modules():
        if type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None:
            where = f"submodule {name!r}" if name else "the model"
            raise CompactError(
                f"{where} is compiled with torch.compile; MW-BP's sequential updates over one shared forward "
                "are not exact under compiled autograd graphs, which capture the weights. Train uncompiled."
            )
    if torch.compiler.is_compiling():
        raise CompactError("MW-BP steps cannot be traced by torch.compile; call them uncompiled")
