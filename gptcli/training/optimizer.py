"""The optimizer a run steps: AdamW for every weight (the default), or Muon + AdamW.

    optimizer = build_optimizer(model, config, device_type)   # steps like one torch optimizer
    optimizer_parts(optimizer)                                 # {"optim": adamw} or + {"muon": muon}

--optimizer adamw: `LanguageModel.configure_optimizers`, weight decay on matrices and embeddings.
--optimizer muon: torch.optim.Muon for the hidden layers' 2-D weights (`LanguageModel.hidden_matrices`:
a transformer block's attention and MLP matrices, an LSTM's input and recurrent matrices) at
--muon-lr, and AdamW at --lr for what Muon is not made for (embeddings, the output head, biases,
norms), as modded-nanogpt and nanochat do. Muon keeps one momentum buffer per matrix and steps
along its orthogonalized version (Newton-Schulz iterations), with no weight decay here.

`MuonWithAdamW` holds the two and is what the trainer, GradScaler (fp16: it unscales through
param_groups, then calls step) and the checkpoint see. AdamW's groups come first in param_groups,
so the logged lr is AdamW's; a checkpoint stores each part under its own prefix (train_state.py).
"""

import math
from typing import Any

import torch

from gptcli.config import TrainConfig
from gptcli.models.base import LanguageModel

ADAMW, MUON = "optim", "muon"  # each part's prefix in a checkpoint: "optim." is AdamW's, as it always was


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with the Newton-Schulz iterations in fp32 on a CPU.

    torch's run in bf16: right on a GPU, but a CPU without bf16 matrix units multiplies bf16 several
    times slower than fp32 (at the cpu-char shape here a step took 8x longer). The update is the
    same: momentum (Nesterov), orthogonalized, scaled by sqrt(max(1, rows/cols)), decoupled decay.
    """

    @torch.no_grad()
    def step(self, closure=None):
        if not any(
            p.grad is not None and p.device.type == "cpu" for g in self.param_groups for p in g["params"]
        ):
            return super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * math.sqrt(max(1, p.size(0) / p.size(1))))
        return None


def orthogonalize(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """Newton-Schulz's quintic iteration towards U V^T of g = U S V^T (as torch's Muon, in g's dtype)."""
    a, b, c = coefficients
    x = g.T if g.size(0) > g.size(1) else g  # (rows <= cols): the Gram matrix is the small one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


class MuonWithAdamW:
    """Muon for the hidden matrices and AdamW for the rest, stepped together as one optimizer."""

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.adamw.param_groups + self.muon.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def state_dict(self) -> dict[str, Any]:
        return {ADAMW: self.adamw.state_dict(), MUON: self.muon.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adamw.load_state_dict(state[ADAMW])
        self.muon.load_state_dict(state[MUON])


Optimizer = torch.optim.Optimizer | MuonWithAdamW


def build_optimizer(model: LanguageModel, config: TrainConfig, device_type: str) -> Optimizer:
    """AdamW over every weight, or (--optimizer muon) Muon over the hidden matrices + AdamW over the rest.

    Every group starts at its peak learning rate (lr or muon_lr): the trainer scales it each step."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw":
        return model.configure_optimizers(config.weight_decay, config.lr, betas, device_type)
    matrices = model.hidden_matrices()
    muon = Muon(matrices, lr=config.muon_lr, momentum=config.muon_momentum, weight_decay=0.0)
    adamw = model.configure_optimizers(config.weight_decay, config.lr, betas, device_type, exclude=matrices)
    return MuonWithAdamW(muon, adamw)


def optimizer_parts(optimizer: Optimizer) -> dict[str, torch.optim.Optimizer]:
    """The torch optimizers inside, by checkpoint prefix: {"optim": AdamW} (+ "muon": Muon)."""
    if isinstance(optimizer, MuonWithAdamW):
        return {ADAMW: optimizer.adamw, MUON: optimizer.muon}
    return {ADAMW: optimizer}
