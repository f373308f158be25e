"""DePALM's optimisation: AdamW over the trainable parameters, linear warm-up then cosine decay."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, weight_decay: float, eps: float, llm_lr: float | None = None,
          decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters in groups: weight decay on matrices only (biases,
    norms, gates and single vectors exempt) or, with ``decay_all``, on every tensor (DePALM's
    optimiser: one AdamW over all trainable parameters); ``llm_lr`` (when set) for tuned LLM weights
    (LoRA or full; names starting with ``llm.``)."""
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}  # (LLM weight, decayed) -> parameters
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("llm."), decay_all or param.ndim >= 2), []).append(param)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
          "lr": llm_lr if in_llm and llm_lr is not None else lr}
         for (in_llm, decayed), params in ordered],
        lr=lr, eps=eps,
    )


def warmup_cosine(total_steps: int, warmup_fraction: float, floor: float) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear from ``floor`` to 1 over ``warmup_fraction`` of
    ``total_steps``, then cosine to ``floor``."""
    total = max(1, int(total_steps))
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return floor + (1 - floor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float, floor: float) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry: :func:`warmup_cosine`, stepped every optimizer step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_fraction, floor))
    return {"scheduler": scheduler, "interval": "step"}


def clip_gradients(module: Any, optimizer: torch.optim.Optimizer, value: float | None, algorithm: str | None) -> None:
    """Lightning's gradient clipping as configured; under FSDP through the wrapped module's own
    ``clip_grad_norm_`` (the gradients are sharded), which Lightning's FSDP precision plugin leaves
    to the module."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(module.trainer.strategy, FSDPStrategy) and value:
        if algorithm not in (None, "norm"):
            raise ValueError(f"FSDP clips by norm only; got gradient_clip_algorithm={algorithm!r}")
        module.trainer.strategy.model.clip_grad_norm_(value)
        return
    module.clip_gradients(optimizer, value, algorithm)
