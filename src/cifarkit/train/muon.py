"""Muon (MomentUm Orthogonalized by Newton-schulz), as airbench94_muon trains its conv filters:
the momentum direction of each filter bank is replaced by its approximate orthogonal polar factor.
Groups marked `muon=True` take that update; the others plain SGD, in the same optimizer."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonalize(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate U V^T of g = U S V^T by a quintic Newton-Schulz iteration (Muon's zeroth power).

    The coefficients (3.4445, -4.7750, 2.0315) trade exactness for speed: singular values land
    roughly in [0.7, 1.2] rather than exactly at 1, which is what Muon needs.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    x = x / (x.norm() + eps)           # top singular value <= 1
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on groups with `muon=True` (conv filters), plain SGD on the rest, in one optimizer.

    Muon groups (as in airbench94_muon): momentum buffer b = m*b + g; update direction g + m*b
    (nesterov) or b; the weight is rescaled to norm sqrt(out_channels) (so weight decay has no
    effect there and is skipped); then p -= lr * orthogonalize(direction reshaped to (out, -1)).
    Other groups follow torch.optim.SGD exactly (coupled weight decay, dampening, nesterov).
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
                 dampening: float = 0.0, weight_decay: float = 0.0, muon: bool = False, ns_steps: int = 5):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening,
                        weight_decay=weight_decay, muon=muon, ns_steps=ns_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    self._muon_step(p, group)
                else:
                    self._sgd_step(p, group)
        return loss

    def _muon_step(self, p: Tensor, group: dict) -> None:
        g, m = p.grad, group["momentum"]
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(g)
        buf.mul_(m).add_(g)
        direction = g.add(buf, alpha=m) if group["nesterov"] else buf
        p.mul_(math.sqrt(p.size(0)) / p.norm().clamp_min(1e-12))
        update = orthogonalize(direction.reshape(p.size(0), -1), group["ns_steps"]).view_as(p)
        p.add_(update, alpha=-group["lr"])

    def _sgd_step(self, p: Tensor, group: dict) -> None:
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        m = group["momentum"]
        if m:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.detach().clone()
            else:
                buf.mul_(m).add_(g, alpha=1 - group["dampening"])
            g = g.add(buf, alpha=m) if group["nesterov"] else buf
        p.add_(g, alpha=-group["lr"])


__all__ = ["Muon", "orthogonalize"]
