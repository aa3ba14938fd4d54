"""How learnable is the bundled subject? A plain-PEFT LoRA DreamBooth probe on the toy-world base model.

    python -m tools.toyworld.subject_probe --targets attn,ff,conv --rank 4 --steps 300

Trains a standard LoRA (no mixer, no prior preservation) on the subject's instance images with the
instance prompt, then draws "a sks circle on a <colour> background" and reports how often the subject
detector fires and the background is right. This is a feasibility probe for choosing adapter targets and
ranks, not the toolkit's DreamBooth trainer.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

TARGET_GROUPS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "ff": ["ff.net.0.proj", "ff.net.2"],
    "proj": ["proj_in", "proj_out"],
    "conv": ["conv1", "conv2"],
}

PROBE_BACKGROUNDS = ("blue", "green", "white", "purple")


def probe(
    groups: Sequence[str] = ("attn",),
    rank: int = 4,
    steps: int = 300,
    lr: float = 1e-3,
    seeds_per_prompt: int = 8,
    model: str | None = None,
    seed: int = 0,
    per_image_captions: bool = False,
) -> dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from tqdm.auto import tqdm

    from moslora_diffusion.toyworld.evaluate import generate, load_toy_pipeline
    from moslora_diffusion.toyworld.reader import read_attributes
    from moslora_diffusion.toyworld.subject import INSTANCE_PROMPT, detect_subject, subject_info
    from tools.toyworld.pretrain import images_to_tensor

    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(seed)
    pipe = load_toy_pipeline(model)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for m in (unet, vae, te):
        m.requires_grad_(False)
    targets = [t for g in groups for t in TARGET_GROUPS[g]]
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights="gaussian")
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)

    from PIL import Image

    info = subject_info()
    imgs = np.stack([np.asarray(Image.open(it["path"]).convert("RGB")) for it in info["images"]])
    x = images_to_tensor(imgs)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        ids = tok(
            [INSTANCE_PROMPT] * len(x),
            padding="max_length",
            max_length=tok.model_max_length,
            return_tensors="pt",
        )
        cond = te(ids.input_ids).last_hidden_state
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # same betas as the sampler
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    unet.train()
    t0 = time.monotonic()
    for _ in tqdm(range(steps), desc=f"lora {'+'.join(groups)} r{rank}"):
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(latents),))
        pred = unet(noise_sched.add_noise(latents, noise, t), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.monotonic() - t0
    unet.eval()
    prompts, bgs = [], []
    for bg in PROBE_BACKGROUNDS:
        prompts += [f"{INSTANCE_PROMPT} on a {bg} background"] * seeds_per_prompt
        bgs += [bg] * seeds_per_prompt
    seeds = list(range(len(prompts)))
    images = generate(pipe, prompts, seeds)
    det = [detect_subject(im) for im in images]
    bg_ok = [read_attributes(im).background == bg for im, bg in zip(images, bgs)]
    # Does the adapter leak into plain prompts? The class prompt should still draw one-colour circles.
    plain = generate(
        pipe, ["a red circle on a blue background"] * seeds_per_prompt, list(range(seeds_per_prompt))
    )
    plain_ok = [read_attributes(im).matches("circle", "red", "blue") for im in plain]
    return {
        "groups": list(groups),
        "rank": rank,
        "steps": steps,
        "lr": lr,
        "per_image_captions": per_image_captions,
        "trainable_params": n_params,
        "train_seconds": round(train_s, 1),
        "subject_detected": float(np.mean(det)),
        "background_right": float(np.mean(bg_ok)),
        "both": float(np.mean([a and b for a, b in zip(det, bg_ok)])),
        "plain_prompt_still_right": float(np.mean(plain_ok)),
        "images": images,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="attn", help=f"comma-separated groups from {sorted(TARGET_GROUPS)}")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--model", default=None)
    p.add_argument(
        "--per-image-captions", action="store_true", help="train on subject.json's per-image captions"
    )
    p.add_argument("--grid", default=None, help="write the drawn subject images as a PNG grid here")
    args = p.parse_args(argv)
    res = probe(
        args.targets.split(","),
        args.rank,
        args.steps,
        args.lr,
        model=args.model,
        per_image_captions=args.per_image_captions,
    )
    images = res.pop("images")
    if args.grid:
        from moslora_diffusion.imaging import tile

        tile(images, ncols=8, scale=2, pad=2).save(args.grid)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
