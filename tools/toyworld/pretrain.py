"""Train the toy-world base model from scratch on rendered data (CPU, time-budgeted).

Stages: (1) write the word-level tokenizer; (2) train the AutoencoderKL on rendered images; (2b, optional:
``broad_vae_minutes``, also with ``resume_from``) continue it on random outlines too, anchored so world
latents stay put; (3) encode a fixed set of rendered training images to latents once (cache); (4) train
the CLIP text encoder and the UNet jointly on the cached latents with randomly sampled captions, keeping an
EMA of both; the EMA pipeline is saved as a stock ``StableDiffusionPipeline`` every few minutes and at the end.

Each training stage gets a wall-clock budget; its cosine learning-rate schedule is fitted to the number
of steps the measured speed allows, so a slower (shared) CPU gives a shorter but complete schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from moslora_diffusion.errors import ConfigError
from moslora_diffusion.toyworld.data import (
    HELD_OUT_COMBOS,
    HELD_OUT_TWO_COLOUR,
    training_caption,
    training_scene,
)
from moslora_diffusion.toyworld.reader import matches_two_colour, read_attributes
from moslora_diffusion.toyworld.render import (
    Scene,
    all_two_colour_combos,
    random_outline_array,
    random_scene,
    render_batch,
)
from moslora_diffusion.toyworld.tokenizer import build_vocab_and_merges


@dataclasses.dataclass
class PretrainConfig:
    """Every knob of :func:`pretrain`; the script exposes each as ``--flag-name``. Minutes are wall-clock
    budgets per stage (the step caps bound the work on a fast machine)."""

    output_dir: Path
    seed: int = 0
    threads: int = 2
    vae_minutes: float = 10.0
    vae_max_steps: int = 3000
    vae_batch_size: int = 16
    vae_lr: float = 2e-3
    num_cached: int = 20000
    two_colour_p: float = 0.3
    unet_minutes: float = 40.0
    unet_max_steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    checkpoint_minutes: float = 5.0
    eval_per_combo: int = 4
    decoder_minutes: float = 8.0
    decoder_max_steps: int = 3000
    decoder_lr: float = 5e-4
    broad_vae_minutes: float = 0.0
    broad_vae_lr: float = 1e-3
    broad_outline_p: float = 0.75
    anchor_weight: float = 0.3
    reuse_vae: bool = False
    resume_from: str = ""

    def __post_init__(self) -> None:
        if self.broad_vae_minutes > 0 and not 0 < self.outlines_per_batch < self.vae_batch_size:
            raise ConfigError(
                f"broad_outline_p={self.broad_outline_p} leaves no world scene or no outline in a VAE batch of "
                f"{self.vae_batch_size}; choose a share strictly between them"
            )

    @property
    def outlines_per_batch(self) -> int:
        """Random outlines in each batch of the outline stage (the rest are world scenes)."""
        return int(round(self.vae_batch_size * self.broad_outline_p))


class BudgetSchedule:
    """Linear warm-up then cosine decay to 5%, over a step count re-estimated from the measured speed."""

    def __init__(self, minutes: float, max_steps: int, warmup: int):
        self.budget = minutes * 60.0
        self.max_steps = max_steps
        self.warmup = warmup
        self.total = max_steps
        self.start = time.monotonic()
        self._t_first: float | None = None

    def update(self, step: int) -> None:
        """Call after each step; refits the total number of steps every 50 steps (after the first 20)."""
        now = time.monotonic()
        if step == 20:
            self._t_first = now
        if self._t_first is not None and step > 20 and step % 50 == 0:
            per_step = (now - self._t_first) / (step - 20)
            remaining = self.budget - (now - self.start)
            self.total = int(min(self.max_steps, step + max(remaining, 0.0) / per_step))

    def done(self, step: int) -> bool:
        return step >= self.total or time.monotonic() - self.start >= self.budget

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))


def images_to_tensor(arr: np.ndarray):
    """uint8 images (N, H, W, 3) as a float tensor (N, 3, H, W) in [-1, 1], the VAE's input."""
    import torch

    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _reconstruction_step(opt, loss, mse, base_lr: float, sched, step: int, log: list, stage: str, bar) -> int:
    """One optimizer step of a VAE stage with budgeted learning rate, logging and progress; returns the new step."""
    _set_lr(opt, base_lr * sched.factor(step))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step += 1
    sched.update(step)
    log.append({"stage": stage, "step": step, "loss": mse.item()})
    bar.total = sched.total
    bar.update(1)
    bar.set_postfix(mse=f"{mse.item():.4f}")
    return step


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train_vae(cfg: PretrainConfig, log: list[dict[str, Any]], vae=None):
    """Stage 2: AutoencoderKL on freshly rendered training-combination images (MSE + L1 + tiny KL); continues
    training ``vae`` when given."""
    import torch
    from tqdm.auto import tqdm

    from moslora_diffusion.toyworld.models import build_vae

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    vae = build_vae() if vae is None else vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = BudgetSchedule(cfg.vae_minutes, cfg.vae_max_steps, warmup=50)
    bar = tqdm(total=cfg.vae_max_steps, desc="vae", dynamic_ncols=True)
    step = 0
    while not sched.done(step):
        x = images_to_tensor(
            render_batch([training_scene(rng, cfg.two_colour_p) for _ in range(cfg.vae_batch_size)])
        )
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        kl = dist.kl().mean() / (4 * 8 * 8)
        loss = mse + (rec - x).abs().mean() + 1e-5 * kl
        step = _reconstruction_step(opt, loss, mse, cfg.vae_lr, sched, step, log, "vae", bar)
    bar.close()
    vae.eval().requires_grad_(False)
    return vae


def finetune_decoder(vae, cfg: PretrainConfig, log: list[dict[str, Any]], latent_noise: float = 0.1):
    """Stage 5: train only the VAE decoder (encoder frozen, so the latent space the UNet learned stays put)
    to map encoder means, plus a little Gaussian noise (``latent_noise`` in unit-std latent units), back
    to the crisp rendered image. Sharpens the decoder and makes it forgiving of imperfect UNet samples."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed + 5)
    rng = np.random.default_rng(cfg.seed + 5)
    vae.requires_grad_(False)
    dec = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in dec:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(dec, lr=cfg.decoder_lr, weight_decay=0.0)
    sched = BudgetSchedule(cfg.decoder_minutes, cfg.decoder_max_steps, warmup=20)
    scale = vae.config.scaling_factor
    bar = tqdm(total=cfg.decoder_max_steps, desc="decoder", dynamic_ncols=True)
    step = 0
    while not sched.done(step):
        x = images_to_tensor(
            render_batch([training_scene(rng, cfg.two_colour_p) for _ in range(cfg.vae_batch_size)])
        )
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            z = z + torch.randn_like(z) * (latent_noise / scale)
        rec = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        loss = mse + (rec - x).abs().mean()
        step = _reconstruction_step(opt, loss, mse, cfg.decoder_lr, sched, step, log, "decoder", bar)
    bar.close()
    vae.eval().requires_grad_(False)
    return vae


def broaden_vae(vae, cfg: PretrainConfig, log: list[dict[str, Any]]):
    """Stage 2b: continue the whole VAE on a mix of world scenes and random outlines
    (:func:`~.render.random_outline_array`, a share ``broad_outline_p`` of each batch), so it can encode and
    decode outlines the world never shows (a DreamBooth subject's). An anchor loss keeps the encoder's
    means of world scenes where the frozen original put them (``anchor_weight`` times their mean squared
    distance in the VAE's scaled latent units: unit std for a saved pipeline's VAE), so a UNet trained on
    the old latents stays valid."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed + 7)
    rng = np.random.default_rng(cfg.seed + 7)
    frozen = copy.deepcopy(vae).eval().requires_grad_(False)
    vae = vae.train().requires_grad_(True)
    scale = vae.config.scaling_factor
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.broad_vae_lr, weight_decay=0.0)
    sched = BudgetSchedule(cfg.broad_vae_minutes, cfg.vae_max_steps, warmup=20)
    bar = tqdm(total=cfg.vae_max_steps, desc="vae outlines", dynamic_ncols=True)
    n_outline = cfg.outlines_per_batch
    n_world = cfg.vae_batch_size - n_outline
    step = 0
    while not sched.done(step):
        world = render_batch([training_scene(rng, cfg.two_colour_p) for _ in range(n_world)])
        outlines = np.stack([random_outline_array(rng) for _ in range(n_outline)])
        x = images_to_tensor(np.concatenate([world, outlines]))
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        with torch.no_grad():
            ref = frozen.encode(x[:n_world]).latent_dist.mean
        anchor = (dist.mean[:n_world] - ref).mul(scale).pow(2).mean()
        kl = dist.kl().mean() / (4 * 8 * 8)
        loss = mse + (rec - x).abs().mean() + 1e-5 * kl + cfg.anchor_weight * anchor
        step = _reconstruction_step(opt, loss, mse, cfg.broad_vae_lr, sched, step, log, "vae_outlines", bar)
        log[-1]["anchor"] = anchor.item()
    bar.close()
    vae.eval().requires_grad_(False)
    return vae


def _to_uint8(images):
    """Decoder output in [-1, 1], (N, 3, H, W) tensor -> (N, H, W, 3) uint8 array."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def round_trip(vae, images: np.ndarray) -> np.ndarray:
    """VAE round trips (encoder mean -> decoder) of (N, H, W, 3) uint8 images, as uint8 images."""
    import torch

    with torch.no_grad():
        return _to_uint8(vae.decode(vae.encode(images_to_tensor(images)).latent_dist.mean).sample)


def reconstruction_accuracy(vae, n: int = 256, seed: int = 12345, two_colour_p: float = 0.0) -> float:
    """Fraction of VAE round trips (encoder mean -> decoder) of rendered scenes the reader reads right (any
    combination; a share ``two_colour_p`` of two-colour objects)."""

    rng = np.random.default_rng(seed)
    two = all_two_colour_combos()
    scenes = [random_scene(rng, two if rng.random() < two_colour_p else None) for _ in range(n)]
    rec = round_trip(vae, render_batch(scenes))
    return float(np.mean([_reads_right(r, s) for r, s in zip(rec, scenes)]))


def encode_cache(vae, cfg: PretrainConfig, scaling: float | None = None) -> tuple[Any, list[Scene], float]:
    """Stage 3: render ``num_cached`` training scenes and encode them (latent means), scaled to unit std
    (or by ``scaling`` when given)."""
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed + 2)
    scenes = [training_scene(rng, cfg.two_colour_p) for _ in range(cfg.num_cached)]
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(scenes), 256), desc="encode", dynamic_ncols=True):
            x = images_to_tensor(render_batch(scenes[i : i + 256]))
            chunks.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks)
    scaling = float(1.0 / latents.std()) if scaling is None else float(scaling)
    with torch.no_grad():  # how well the reader reads VAE reconstructions (a ceiling for the whole model)
        rec = vae.decode(latents[:256]).sample
    rec = _to_uint8(rec)
    ok = [_reads_right(r, s) for r, s in zip(rec, scenes[:256])]
    tqdm.write(f"VAE reconstructions read correctly: {np.mean(ok):.3f} (256 images)")
    return latents * scaling, scenes, scaling


def _reads_right(image: np.ndarray, scene: Scene) -> bool:
    if scene.color2 is not None:
        return matches_two_colour(image, scene.shape, scene.color, scene.color2, scene.background)
    return read_attributes(image).matches(scene.shape, scene.color, scene.background)


def save_pipeline(path: Path, vae, text_encoder, tokenizer, unet) -> None:
    """Save a stock StableDiffusionPipeline (DDIM scheduler, no safety checker), replacing ``path`` atomically."""
    from diffusers import StableDiffusionPipeline

    from moslora_diffusion.toyworld.models import build_sample_scheduler

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # Also the plain BPE files, so tokenizers without tokenizer.json support (older transformers) load it.
    vocab, merges = build_vocab_and_merges()
    (tmp / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return pipe


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (raw and smoothed) of both stages into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, stage, title in zip(
        axes, ("vae", "unet"), ("VAE reconstruction MSE", "UNet noise MSE (min-SNR weighted)")
    ):
        rows = [r for r in log if r.get("stage") == stage and "loss" in r]
        if not rows:
            ax.set_visible(False)
            continue
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps, loss, alpha=0.25, lw=0.6)
        ax.plot(steps[k - 1 :], smooth, lw=1.5)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        evals = [r for r in log if r.get("stage") == stage and "heldout_all_three" in r]
        if evals:
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in evals], [r["heldout_all_three"] for r in evals], "o-", color="C3")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("held-out all-3 accuracy (EMA)", color="C3")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _EMA:
    def __init__(self, model, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.src = [p for p in model.parameters()]
        self.dst = [p for p in self.model.parameters()]

    def update(self, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.dst, [p.detach() for p in self.src], 1.0 - d)


def pretrain(cfg: PretrainConfig) -> Path:
    """Run all stages; return the saved pipeline directory (``output_dir/pipeline``)."""
    import torch
    from diffusers.training_utils import compute_snr
    from tqdm.auto import tqdm

    from moslora_diffusion.toyworld.evaluate import evaluate_base
    from moslora_diffusion.toyworld.models import (
        build_text_encoder,
        build_train_scheduler,
        build_unet,
        build_vae,
    )
    from moslora_diffusion.toyworld.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer_files

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    t0 = time.monotonic()

    if cfg.resume_from:
        # Continue from a saved pipeline: its tokenizer, VAE (and scaling factor), text encoder and UNet.
        from diffusers import StableDiffusionPipeline

        src = StableDiffusionPipeline.from_pretrained(cfg.resume_from, dtype=torch.float32)
        tokenizer = src.tokenizer
        final_vae = src.vae.eval().requires_grad_(False)
        if cfg.broad_vae_minutes > 0:
            final_vae = broaden_vae(final_vae, cfg, log)
            final_vae.save_pretrained(out / "vae")
        latents, scenes, scaling = encode_cache(final_vae, cfg, scaling=final_vae.config.scaling_factor)
        text_encoder, unet = src.text_encoder, src.unet
        del src
    else:
        tokenizer = load_tokenizer(write_tokenizer_files(out / "tokenizer_src"))
        vae_dir = out / "vae"
        if cfg.reuse_vae and (vae_dir / "config.json").exists():
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
            if cfg.vae_minutes > 0:  # continue training it
                vae = train_vae(cfg, log, vae)
                vae.save_pretrained(vae_dir)
        else:
            vae = train_vae(cfg, log)
            vae.save_pretrained(vae_dir)
        if cfg.broad_vae_minutes > 0:
            vae = broaden_vae(vae, cfg, log)
            vae.save_pretrained(vae_dir)
        latents, scenes, scaling = encode_cache(vae, cfg)
        final_vae = build_vae(scaling_factor=scaling)
        final_vae.load_state_dict(vae.state_dict())
        final_vae.eval().requires_grad_(False)
        torch.manual_seed(cfg.seed)
        text_encoder = build_text_encoder(tokenizer)
        unet = build_unet()
    log.append(
        {
            "stage": "cache",
            "scaling_factor": scaling,
            "n": len(scenes),
            "minutes": (time.monotonic() - t0) / 60,
        }
    )

    rng = np.random.default_rng(cfg.seed + 3)
    text_encoder.train().requires_grad_(True)
    unet.train().requires_grad_(True)
    noise_sched = build_train_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    ema_unet, ema_text = _EMA(unet, cfg.ema_decay), _EMA(text_encoder, cfg.ema_decay)
    sched = BudgetSchedule(cfg.unet_minutes, cfg.unet_max_steps, cfg.warmup_steps)
    pipe_dir = out / "pipeline"
    last_ckpt = time.monotonic()

    def checkpoint(step: int) -> None:
        unet.save_pretrained(out / "raw" / "unet")  # the non-EMA weights, for inspection or resuming
        text_encoder.save_pretrained(out / "raw" / "text_encoder")
        pipe = save_pipeline(pipe_dir, final_vae, ema_text.model, tokenizer, ema_unet.model)
        if cfg.eval_per_combo > 0:
            pipe.set_progress_bar_config(disable=True)
            res = evaluate_base(
                pipe=pipe, per_combo=cfg.eval_per_combo, combos=HELD_OUT_COMBOS, progress=False
            )
            entry = {"stage": "unet", "step": step, "heldout_all_three": res["all_three"]}
            entry.update({k: res[k] for k in ("shape", "color", "background")})
            if cfg.two_colour_p > 0:
                two = evaluate_base(  # the same per-combo count on the two-colour panel
                    pipe=pipe, per_combo=cfg.eval_per_combo, combos=HELD_OUT_TWO_COLOUR, progress=False
                )
                entry["heldout_two_colour"] = two["all_three"]
            log.append(entry)
            tqdm.write(f"[step {step}] held-out (EMA, {res['n']} images): {json.dumps(entry)}")
        plot_losses(log, out / "loss_curve.png")
        (out / "train_log.json").write_text(json.dumps({"config": _cfg_json(cfg), "log": log}))

    bar = tqdm(total=cfg.unet_max_steps, desc="unet+text", dynamic_ncols=True)
    step = 0
    n = len(scenes)
    while not sched.done(step):
        idx = rng.integers(n, size=cfg.batch_size)
        x0 = latents[torch.from_numpy(idx)]
        caps = [training_caption(scenes[i], rng) for i in idx]
        ids = tokenizer(
            caps, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch_size,))
        xt = noise_sched.add_noise(x0, noise, t)
        cond = text_encoder(ids).last_hidden_state
        pred = unet(xt, t, cond).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        snr = compute_snr(noise_sched, t)
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
        loss = (per * weight).mean()
        _set_lr(opt, cfg.lr * sched.factor(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(step)
        ema_text.update(step)
        step += 1
        sched.update(step)
        log.append({"stage": "unet", "step": step, "loss": loss.item()})
        bar.total = sched.total
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
            checkpoint(step)
            last_ckpt = time.monotonic()
    bar.close()
    if cfg.decoder_minutes > 0:
        final_vae = finetune_decoder(final_vae, cfg, log)
        tqdm.write(
            f"VAE round trips read correctly after decoder fine-tuning: {reconstruction_accuracy(final_vae, two_colour_p=cfg.two_colour_p):.3f}"
        )
    checkpoint(step)
    log.append({"stage": "done", "minutes": (time.monotonic() - t0) / 60, "unet_steps": step})
    (out / "train_log.json").write_text(json.dumps({"config": _cfg_json(cfg), "log": log}))
    return pipe_dir


def _cfg_json(cfg: PretrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["output_dir"] = str(d["output_dir"])
    return d
