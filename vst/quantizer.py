"""`VectorQuantizer`: cosine nearest-neighbour codebook with EMA updates, dead-code restart and a
straight-through gradient. In eval mode it is a pure argmax + gather (exports to ONNX as such)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, codes: int, dim: int, decay: float = 0.99, dead_after: float = 0.03, eps: float = 1e-5):
        super().__init__()
        self.codes, self.dim, self.decay, self.eps = codes, dim, decay, eps
        self.dead_after = dead_after  # a code whose EMA usage falls below this share of the mean is restarted
        init = F.normalize(torch.randn(codes, dim), dim=-1)
        self.register_buffer("codebook", init)
        self.register_buffer("ema_count", torch.ones(codes))
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised z, ids, cosine distances) for z [..., dim]."""
        zn = F.normalize(z, dim=-1)
        sim = zn @ self.codebook.t()
        best, ids = sim.max(dim=-1)
        return zn, ids, 1.0 - best

    def forward(self, z: torch.Tensor):
        """Returns (quantized with straight-through gradient, ids, distances, commitment loss)."""
        if self.training and not bool(self.initialized):
            self._init_from(F.normalize(z.detach(), dim=-1).reshape(-1, self.dim))
        zn, ids, dist = self.lookup(z)
        q = self.codebook[ids]
        if self.training:
            self._ema_update(zn.detach().reshape(-1, self.dim), ids.reshape(-1))
        commit = F.mse_loss(zn, q.detach())
        return zn + (q - zn).detach(), ids, dist, commit

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        """Start the codebook on the data (random encoder outputs), not on random directions."""
        pick = flat[torch.randint(0, flat.shape[0], (self.codes,), device=flat.device)]
        fresh = F.normalize(pick + 0.05 * torch.randn_like(pick), dim=-1)
        self.codebook.copy_(fresh)
        self.ema_sum.copy_(fresh)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.codes).type_as(flat)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.ema_sum / (self.ema_count[:, None] + self.eps), dim=-1))
        dead = self.ema_count < self.dead_after * self.ema_count.mean()
        n_dead = int(dead.sum())
        if n_dead:
            pick = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
            fresh = F.normalize(pick + 0.01 * torch.randn_like(pick), dim=-1)
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh * self.ema_count.mean()
            self.ema_count[dead] = self.ema_count.mean()
            self.restarts += n_dead

    @torch.no_grad()
    def usage(self, ids: torch.Tensor) -> tuple[float, float]:
        """(share of codes used, perplexity) of a batch of ids."""
        counts = torch.bincount(ids.reshape(-1), minlength=self.codes).float()
        p = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        return float((counts > 0).float().mean()), float(perplexity)
