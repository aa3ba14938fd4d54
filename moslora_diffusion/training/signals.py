"""Learning signals any model can give: fixed probes, a few UNet forwards, no sampling loop.

At every validation the trainer measures, on probes drawn once from the run's seed (the same noise and
timesteps every time, so a change is the adapter's, not the dice's):

- ``subject_fit``: the denoising loss on the instance images with their own captions (lower = closer fit);
  ``subject_fit_high`` the same at the noisiest probe timestep only (the global shape, as sampling starts);
- ``binding``: how much the identifier changes the prediction on the instance images (instance caption
  vs the same caption with the class prompt in its place), relative: ‖ε(inst) − ε(class)‖ / ‖ε(class)‖;
- ``class_shift`` and ``prompt_shift``: how far the adapter moves the prediction (adapter on vs off,
  relative) for the class prompt and for ordinary prompts that have nothing to do with the subject — the
  prior drifting. The base model's predictions are computed once, with the adapters switched off.

Probe latents are the VAE means of the instance images (and of the class images for the class family when
there are any), centre-cropped and unflipped. Nothing here touches the training's random streams: a run
with signals trains exactly as one without.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import data, losses, models

SIGNALS_NAME = "signals.json"
SIGNALS_CURVE_NAME = "signals_curve.png"
SIGNAL_NAMES = ("subject_fit", "subject_fit_high", "binding", "class_shift", "prompt_shift")
# Ordinary prompts for the prompt-shift signal on any model (--signal_prompts replaces them).
DEFAULT_SIGNAL_PROMPTS = (
    "a photo of a city street at night",
    "a bowl of fruit on a wooden table",
    "a watercolor painting of mountains",
    "a portrait of an old man",
)
PROBE_TIMESTEPS = (0.2, 0.5, 0.8)  # fractions of the training schedule
MAX_PROBE_IMAGES = 4
_SEED_SALT = 424_242  # probes draw from their own generator, never the training's


@dataclass
class Family:
    """One probe family: noised latents at fixed timesteps and the captions to condition on."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    captions: list[str]
    time_ids: torch.Tensor | None  # SDXL micro-conditioning, else None


@contextlib.contextmanager
def adapters_off(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Run the base model: every PEFT adapter layer of ``modules`` switched off, restored afterwards."""
    from ..compat import adapter_layers, set_adapter_layer_disabled

    layers = [layer for m in modules for layer in adapter_layers(m)]
    before = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            set_adapter_layer_disabled(layer, True)
        yield
    finally:
        for layer, was in zip(layers, before):
            set_adapter_layer_disabled(layer, was)


def class_caption(caption: str, instance_prompt: str, class_prompt: str | None) -> str | None:
    """The caption with the instance prompt replaced by the class prompt; None when there is no class prompt."""
    if not class_prompt:
        return None
    return caption.replace(instance_prompt, class_prompt) if instance_prompt in caption else class_prompt


class SignalProbe:
    """The fixed probes of one run and the base model's predictions on them; `measure()` per validation."""

    def __init__(self, run: Any, prompts: Sequence[str]) -> None:
        self.run = run
        cfg = run.cfg
        gen = torch.Generator().manual_seed(run.seed + _SEED_SALT)
        inst = run.instances[:MAX_PROBE_IMAGES]
        inst_examples = [self._example(s.image, s.caption) for s in inst]
        x_inst = self._latents(inst_examples)
        self.fit = self._family(x_inst, [e.caption for e in inst_examples], inst_examples, gen)
        binding = [class_caption(e.caption, cfg.instance_prompt, cfg.class_prompt) for e in inst_examples]
        self.binding = None
        if all(c is not None for c in binding):
            captions = [c for c in binding for _ in PROBE_TIMESTEPS]
            self.binding = Family(
                self.fit.noisy, self.fit.timesteps, self.fit.target, captions, self.fit.time_ids
            )
        if run.classes:
            prior_examples = [self._example(s.image, s.caption) for s in run.classes[:MAX_PROBE_IMAGES]]
            x_prior = self._latents(prior_examples)
        else:  # no class images: the instance images carry the prior probes too (encoded once)
            prior_examples, x_prior = inst_examples, x_inst
        self.classes = None
        if cfg.class_prompt:
            self.classes = self._family(
                x_prior, [cfg.class_prompt] * len(prior_examples), prior_examples, gen
            )
        ordinary = [prompts[i % len(prompts)] for i in range(len(prior_examples))]
        self.ordinary = self._family(x_prior, ordinary, prior_examples, gen)
        with adapters_off(self.models()):
            self.base_class = self._predict(self.classes) if self.classes else None
            self.base_ordinary = self._predict(self.ordinary)

    # ---- building ---------------------------------------------------------------------------------------

    def _example(self, image: Any, caption: str) -> data.Example:
        size = (self.run.resolution, self.run.resolution)
        return data.preprocess(image, caption, size, True, False, None)

    def _latents(self, examples: list[data.Example]) -> torch.Tensor:
        from .batches import latent_stats

        pixels = torch.stack([e.pixels for e in examples])
        with torch.autocast(device_type=self.run.device.type, enabled=False):
            mean, _ = latent_stats(self.run, pixels)
        vae_cfg = self.run.comps.vae.config
        if getattr(vae_cfg, "shift_factor", None) is not None:
            mean = mean - vae_cfg.shift_factor
        return mean * vae_cfg.scaling_factor

    def _family(self, x0: torch.Tensor, captions: list[str], examples: list[data.Example],
                gen: torch.Generator) -> Family:  # fmt: skip
        """Every latent at every probe timestep, with noise drawn from ``gen``."""
        sched = self.run.comps.noise_scheduler
        n_t = len(PROBE_TIMESTEPS)
        x0 = x0.repeat_interleave(n_t, dim=0)
        total = sched.config.num_train_timesteps
        # image-major, timestep-minor, as repeat_interleave above
        t = torch.tensor([int(f * (total - 1)) for _ in range(x0.shape[0] // n_t) for f in PROBE_TIMESTEPS])
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        noisy = sched.add_noise(x0, noise, t.to(x0.device))
        target = losses.prediction_target(sched, self.run.comps.prediction_type, x0, noise, t.to(x0.device))
        time_ids = None
        if self.run.comps.is_sdxl:
            time_ids = models.sdxl_time_ids(
                [e.original_size for e in examples], [e.crop_top_left for e in examples],
                [e.target_size for e in examples],
            ).repeat_interleave(n_t, dim=0)  # fmt: skip
        return Family(noisy, t.to(x0.device), target, [c for c in captions for _ in range(n_t)], time_ids)

    def models(self) -> list[torch.nn.Module]:
        """The unwrapped UNet and text encoders the probes run through."""
        acc = self.run.accelerator
        return [acc.unwrap_model(self.run.unet), *(acc.unwrap_model(te) for te in self.run.text_encoders)]

    # ---- measuring --------------------------------------------------------------------------------------

    @torch.no_grad()
    def _predict(self, fam: Family) -> torch.Tensor:
        run = self.run
        unet, *tes = self.models()
        ids = models.tokenize(run.comps.tokenizers, fam.captions)
        embeds, pooled = models.encode_tokens(run.comps.arch, tes, ids)
        added = None
        if fam.time_ids is not None:
            added = {"text_embeds": pooled, "time_ids": fam.time_ids.to(run.device, dtype=pooled.dtype)}
        noisy = fam.noisy.to(run.device, dtype=embeds.dtype)
        pred = unet(noisy, fam.timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added,
                    return_dict=False)[0]  # fmt: skip
        return pred.float()

    def measure(self) -> dict[str, float]:
        """The signals (`SIGNAL_NAMES`) for the adapters as they are now (models in eval mode, no gradients)."""
        fit_pred = self._predict(self.fit)
        sq = (
            ((fit_pred - self.fit.target.to(fit_pred)) ** 2).flatten(1).mean(1).view(-1, len(PROBE_TIMESTEPS))
        )
        out = {"subject_fit": float(sq.mean()), "subject_fit_high": float(sq[:, -1].mean())}
        out["binding"] = (
            relative_change(fit_pred, self._predict(self.binding)) if self.binding is not None else math.nan
        )
        out["class_shift"] = (
            relative_change(self._predict(self.classes), self.base_class)
            if self.classes is not None
            else math.nan
        )
        out["prompt_shift"] = relative_change(self._predict(self.ordinary), self.base_ordinary)
        return out


def relative_change(new: torch.Tensor, ref: torch.Tensor) -> float:
    """‖new − ref‖ / ‖ref‖ over the whole batch."""
    ref = ref.to(new)
    return float(torch.linalg.vector_norm(new - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-12))


def signal_prompts(text: str | None) -> tuple[str, ...]:
    """``--signal_prompts`` ('|'-separated) or the defaults."""
    if not text:
        return DEFAULT_SIGNAL_PROMPTS
    return tuple(p.strip() for p in text.split("|") if p.strip())


def history_digest(history: Sequence[Mapping[str, float]]) -> str:
    """One line for the progress output."""
    last = history[-1]
    return ", ".join(f"{k} {last[k]:.4g}" for k in SIGNAL_NAMES if k in last and math.isfinite(last[k]))
