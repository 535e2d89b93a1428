"""Hand-written backpropagation for small chains, with no autograd: the independent reference that the
MW-BP tests compare compact against.

A network is a list of trunk segments (the last one ends with the final classifier) and one head per
auxiliary exit; each layer implements ``forward(P, x) -> (y, cache)`` and
``backward(P, cache, dy) -> (dx, grads)`` where ``P`` maps parameter names to tensors. Passing different
``P`` to forward and backward is how the variants differ: MW-BP's backward uses the *updated* parameters
(Eq. 10) and the caches (features) of the single forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Linear:
    def __init__(self, w: str, b: str | None) -> None:
        self.w, self.b = w, b

    def forward(self, P, x):
        y = x @ P[self.w].T
        return (y + P[self.b] if self.b else y), x

    def backward(self, P, x, dy):
        grads = {self.w: dy.T @ x}
        if self.b:
            grads[self.b] = dy.sum(0)
        return dy @ P[self.w], grads


class Tanh:
    def forward(self, P, x):
        y = torch.tanh(x)
        return y, y

    def backward(self, P, y, dy):
        return dy * (1 - y * y), {}


class ReLU:
    def forward(self, P, x):
        return x.clamp_min(0), x > 0

    def backward(self, P, mask, dy):
        return dy * mask, {}


class Conv:
    def __init__(self, w: str, b: str | None, stride: int = 1, padding: int = 1) -> None:
        self.w, self.b, self.stride, self.padding = w, b, stride, padding

    def forward(self, P, x):
        y = F.conv2d(x, P[self.w], P[self.b] if self.b else None, self.stride, self.padding)
        return y, x

    def backward(self, P, x, dy):
        w = P[self.w]
        dx = torch.nn.grad.conv2d_input(x.shape, w, dy, self.stride, self.padding)
        grads = {self.w: torch.nn.grad.conv2d_weight(x, w.shape, dy, self.stride, self.padding)}
        if self.b:
            grads[self.b] = dy.sum((0, 2, 3))
        return dx, grads


class BatchNorm:
    """Training-mode BatchNorm over all dims but the channel dim (1)."""

    def __init__(self, w: str, b: str, eps: float = 1e-5) -> None:
        self.w, self.b, self.eps = w, b, eps

    @staticmethod
    def _shape(x):
        return [1, -1] + [1] * (x.dim() - 2)

    def forward(self, P, x):
        dims = [0] + list(range(2, x.dim()))
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
        invstd = 1.0 / torch.sqrt(var + self.eps)
        xhat = (x - mu) * invstd
        s = self._shape(x)
        return P[self.w].view(s) * xhat + P[self.b].view(s), (xhat, invstd, dims)

    def backward(self, P, cache, dy):
        xhat, invstd, dims = cache
        m = xhat.numel() / xhat.shape[1]
        grads = {self.w: (dy * xhat).sum(dims), self.b: dy.sum(dims)}
        dxhat = dy * P[self.w].view(self._shape(dy))
        dx = invstd / m * (m * dxhat - dxhat.sum(dims, keepdim=True) - xhat * (dxhat * xhat).sum(dims, keepdim=True))
        return dx, grads


class GAP:
    def forward(self, P, x):
        return x.mean((2, 3)), x.shape

    def backward(self, P, shape, dy):
        return dy[:, :, None, None].expand(shape) / (shape[2] * shape[3]), {}


def ce_grad(logits, y):
    """Loss and d(mean cross-entropy)/d(logits)."""
    p = torch.softmax(logits, 1)
    loss = -torch.log(p[torch.arange(len(y)), y]).mean()
    onehot = torch.zeros_like(p)
    onehot[torch.arange(len(y)), y] = 1
    return loss, (p - onehot) / len(y)


class Net:
    """``segments[s]`` ends at exit ``s`` (the last one is the final output); ``heads[i]`` reads segment i."""

    def __init__(self, segments, heads) -> None:
        self.segments, self.heads = segments, heads

    @property
    def num_outputs(self) -> int:
        return len(self.segments)

    @staticmethod
    def _names(layers) -> set:
        return {n for layer in layers for n in (getattr(layer, "w", None), getattr(layer, "b", None)) if n}

    def segment_names(self, s: int) -> set:
        return self._names(self.segments[s])

    def head_names(self, i: int) -> set:
        return self._names(self.heads[i]) if i < self.num_outputs - 1 else set()

    def trunk_names(self, i: int) -> set:
        return set().union(*(self.segment_names(s) for s in range(i + 1)))

    def forward(self, P, x, upto: int | None = None):
        """Logits of outputs 0..upto and the caches of every layer run."""
        upto = self.num_outputs - 1 if upto is None else upto
        caches, logits = {}, []
        h = x
        for s in range(upto + 1):
            for j, layer in enumerate(self.segments[s]):
                h, caches[("seg", s, j)] = layer.forward(P, h)
            if s < self.num_outputs - 1:
                z = h
                for j, layer in enumerate(self.heads[s]):
                    z, caches[("head", s, j)] = layer.forward(P, z)
                logits.append(z)
            else:
                logits.append(h)
        return logits, caches

    def backward(self, P, caches, i, dlogits):
        """Parameter gradients of loss ``i`` given d(loss)/d(logits_i); input gradients through ``P``."""
        grads = {}
        d = dlogits
        if i < self.num_outputs - 1:
            for j in reversed(range(len(self.heads[i]))):
                d, g = self.heads[i][j].backward(P, caches[("head", i, j)], d)
                grads.update(g)
        for s in reversed(range(i + 1)):
            for j in reversed(range(len(self.segments[s]))):
                d, g = self.segments[s][j].backward(P, caches[("seg", s, j)], d)
                grads.update(g)
        return grads


class SGD:
    """torch.optim.SGD's update (momentum, dampening 0, Nesterov, weight decay), written out."""

    def __init__(self, momentum=0.9, nesterov=True, weight_decay=5e-4) -> None:
        self.momentum, self.nesterov, self.wd = momentum, nesterov, weight_decay
        self.buf = {}

    def update(self, P, grads, lrs):
        for name, g in grads.items():
            d = g + self.wd * P[name]
            if name in self.buf:
                self.buf[name] = self.momentum * self.buf[name] + d
            else:
                self.buf[name] = d.clone()
            if self.nesterov:
                d = d + self.momentum * self.buf[name]
            P[name] = P[name] - lrs[name] * d


def run(algorithm, net: Net, P0: dict, batches, gammas, lr, *, reverse=False, lr_scaling="paper", c=1, **sgd):
    """Train ``P0`` (copied) on ``batches`` with one of the paper's algorithms, by hand. Returns the parameters.

    ``algorithm``: ``mwbp`` (Eq. 9-10), ``old-weights`` (backward through the forward-time weights),
    ``naive`` (re-forward before each backward), ``joint``, ``relay`` or ``standard``.
    """
    P = {k: v.clone() for k, v in P0.items()}
    K = net.num_outputs - 1
    order = list(range(K + 1))[::-1] if reverse else list(range(K + 1))
    opts = [SGD(**sgd) for _ in range(K + 1)]

    def lrs_and_scales(i):
        trunk, head = net.trunk_names(i), net.head_names(i)
        if lr_scaling == "paper" or i == K:
            return {n: lr for n in trunk | head}, {n: gammas[i] for n in trunk | head}
        div = sum(gammas[i:K])
        lrs = {n: lr / div for n in trunk} | {n: lr for n in head}
        return lrs, {n: gammas[i] for n in trunk} | {n: 1.0 for n in head}

    for x, y in batches:
        if algorithm in ("mwbp", "old-weights"):
            logits, caches = net.forward(P, x)
            P_forward = dict(P)
            for i in order:
                _, dl = ce_grad(logits[i], y)
                g = net.backward(P if algorithm == "mwbp" else P_forward, caches, i, dl)
                lrs, scales = lrs_and_scales(i)
                opts[i].update(P, {n: scales[n] * g[n] for n in g}, lrs)
        elif algorithm == "naive":
            for i in order:
                logits, caches = net.forward(P, x, upto=i)
                _, dl = ce_grad(logits[i], y)
                g = net.backward(P, caches, i, dl)
                lrs, scales = lrs_and_scales(i)
                opts[i].update(P, {n: scales[n] * g[n] for n in g}, lrs)
        elif algorithm in ("joint", "relay", "standard"):
            logits, caches = net.forward(P, x)
            total = {}
            for i in range(K + 1):
                if algorithm == "standard" and i < K:
                    continue
                _, dl = ce_grad(logits[i], y)
                g = net.backward(P, caches, i, dl)
                if algorithm == "relay":
                    reach = set().union(*(net.segment_names(s) for s in range(max(0, i - c), i + 1)))
                    g = {n: v for n, v in g.items() if n in reach | net.head_names(i)}
                weight = 1.0 if algorithm == "standard" else gammas[i]
                for n, v in g.items():
                    total[n] = total.get(n, 0) + weight * v
            opts[0].update(P, total, {n: lr for n in total})
        else:
            raise ValueError(algorithm)
    return P
