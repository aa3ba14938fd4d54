"""The optimizer of a run: parameter groups (LoRA+ and mixer learning-rate ratios) and the optimizer itself.

Groups: one per adapted component (UNet, text encoders), split by matrix role when a ratio asks for it — A
(and anything else) at the component's rate, B at ``loraplus ratio`` × that rate, MoSLoRA's mixer at
``mixer_lr_ratio`` × that rate. Without ratios the layout is the one group per component of earlier versions,
so their checkpoints resume. Optimizers come from maintained packages (torch, bitsandbytes, prodigyopt,
lion-pytorch, transformers, schedulefree); their presence is checked in `args._check_packages`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ..formats.native import PARTS
from . import models
from .args import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["ROLES", "evaluation_weights", "make_optimizer", "param_groups", "parameter_role", "set_mode"]

ROLES = ("A", "mixer", "B")  # the roles of an adapter's matrices, in the order of `formats.native.PARTS`
_ROLE_OF_PART = dict(zip(PARTS, ROLES))


def parameter_role(name: str) -> str:
    """'A', 'mixer' or 'B' for an adapter parameter's name (anything else trains at A's rate: 'A')."""
    for part in name.split("."):
        if part in _ROLE_OF_PART:
            return _ROLE_OF_PART[part]
    return "A"


def _ratios(cfg: TrainConfig, component: str) -> dict[str, float]:
    loraplus = cfg.loraplus_unet_lr_ratio if component == "unet" else cfg.loraplus_text_encoder_lr_ratio
    if loraplus is None:
        loraplus = cfg.loraplus_lr_ratio
    return {"A": 1.0, "B": loraplus or 1.0, "mixer": cfg.mixer_lr_ratio or 1.0}


def param_groups(cfg: TrainConfig, comps: models.Components, num_processes: int) -> list[dict[str, Any]]:
    """The optimizer's groups: ``{"params", "lr", "name"}`` with ``name`` "unet" / "text_encoder…" (one group a
    component) or "unet.B"-style names when a LoRA+ or mixer ratio splits a component by role."""
    factor = cfg.gradient_accumulation_steps * cfg.train_batch_size * num_processes if cfg.scale_lr else 1
    groups = []
    for component, model in comps.adapted_models().items():
        lr = (
            cfg.learning_rate if component == "unet" else (cfg.text_encoder_lr or cfg.learning_rate)
        ) * factor
        ratios = _ratios(cfg, component)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if all(r == 1.0 for r in ratios.values()):
            groups.append({"params": [p for _, p in trainable], "lr": lr, "name": component})
            continue
        for role in ROLES:
            params = [p for n, p in trainable if parameter_role(n) == role]
            if params:
                groups.append({"params": params, "lr": lr * ratios[role], "name": f"{component}.{role}"})
    return groups


def make_optimizer(cfg: TrainConfig, comps: models.Components, num_processes: int) -> torch.optim.Optimizer:
    """The optimizer `--optimizer` names over `param_groups`."""
    groups = param_groups(cfg, comps, num_processes)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    decay = cfg.adam_weight_decay
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=betas, weight_decay=decay, eps=cfg.adam_epsilon)
    if cfg.optimizer == "prodigy":
        import prodigyopt

        if cfg.learning_rate < 0.1:
            logger.warning("Prodigy adapts the step size itself; a --learning_rate around 1.0 is usual")
        return prodigyopt.Prodigy(groups, betas=betas, weight_decay=decay)
    if cfg.optimizer == "lion":
        import lion_pytorch

        # Lion's update has unit size per entry: its usual learning rate is 3-10x below AdamW's
        return lion_pytorch.Lion(groups, betas=betas, weight_decay=decay)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # a fixed learning rate (the schedule's), as kohya-ss sets it up for LoRA; no relative step
        return Adafactor(
            groups, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=decay
        )
    if cfg.optimizer == "adamw_schedulefree":
        import schedulefree

        return schedulefree.AdamWScheduleFree(
            groups, betas=betas, weight_decay=decay, eps=cfg.adam_epsilon, warmup_steps=cfg.lr_warmup_steps
        )
    # One multi-tensor update over every adapter tensor instead of a Python loop over them: twice as fast on
    # CPU and bit-identical to the loop (tests/test_signals.py checks); fused kernels on CUDA.
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kind = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, betas=betas, weight_decay=decay, eps=cfg.adam_epsilon, **kind)


def set_mode(optimizer: Any, training: bool) -> None:
    """Schedule-free optimizers keep two points: the one to train from and the one to evaluate and save
    (`optimizer.train()` / `.eval()` swap the weights between them). Other optimizers have no mode."""
    method = getattr(optimizer, "train" if training else "eval", None)
    if callable(method):
        method()


@contextlib.contextmanager
def evaluation_weights(optimizer: Any, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """The weights to evaluate inside the block, the training weights again after, bit for bit.

    For a schedule-free optimizer the training point is copied, the evaluation point swapped in, and the copy
    put back after (the swap there and back is not exact in floating point: without the copy, validation would
    change the training and processes would drift apart). Other optimizers: nothing to do."""
    if not callable(getattr(optimizer, "eval", None)):
        yield
        return
    kept = [p.detach().clone() for p in params]
    set_mode(optimizer, training=False)
    try:
        yield
    finally:
        set_mode(optimizer, training=True)
        with torch.no_grad():
            torch._foreach_copy_(params, kept)
