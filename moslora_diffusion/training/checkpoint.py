"""Training checkpoints: adapter tensors, optimizer, LR schedule, RNG states and step; never the base model.

Layout of `output_dir/checkpoint-<step>/`:

    adapter.safetensors      every trainable tensor, keyed `<component>.<parameter name>` (fp32)
    optimizer.pt, scheduler.pt   state dicts (torch.save; read back with weights_only=True)
    rng-<rank>.json / rng-<rank>.safetensors   Python, NumPy and torch RNG states of each process
    state.json               step, seed, loss history and the run's fingerprint (base model + adapter)

A checkpoint is written into a temporary folder and renamed into place, so a crash never leaves a
half-written `checkpoint-<step>`. The fingerprint lets a run refuse to resume another run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainConfigError

if TYPE_CHECKING:
    from .args import TrainConfig

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "state.json"
ADAPTER_NAME = "adapter.safetensors"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------- fingerprint


def base_model_fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What identifies the base model: resolved local path (or hub id), revision, variant and VAE."""

    def norm(name: str | None) -> str | None:
        if name and Path(name).expanduser().exists():
            return str(Path(name).expanduser().resolve())
        return name

    return {
        "name_or_path": norm(cfg.pretrained_model_name_or_path),
        "revision": cfg.revision,
        "variant": cfg.variant,
        "vae": norm(cfg.pretrained_vae_model_name_or_path),
    }


def adapter_fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What fixes the adapter's tensors and their meaning: type, rank, alpha, scaling, mixer, targets."""
    from ..targets import resolve_targets

    return {
        "adapter": cfg.adapter,
        "rank": cfg.rank,
        "lora_alpha": float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.rank),
        "use_rslora": cfg.use_rslora,
        "mixer_init": cfg.mixer_init if cfg.adapter == "moslora" else None,
        "unet_targets": resolve_targets(cfg.unet_targets, "unet"),
        "text_encoder_targets": (
            resolve_targets(cfg.text_encoder_targets, "text_encoder") if cfg.train_text_encoder else None
        ),
    }


def _fingerprint_mismatch(state: Mapping[str, Any], cfg: TrainConfig) -> str | None:
    for key, expected in (("base_model", base_model_fingerprint(cfg)), ("adapter", adapter_fingerprint(cfg))):
        found = state.get(key)
        if found != expected:
            diff = {
                k: (found.get(k) if isinstance(found, dict) else None, v)
                for k, v in expected.items()
                if not isinstance(found, dict) or found.get(k) != v
            }
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            return f"different {key.replace('_', ' ')} ({detail})"
    return None


# ----------------------------------------------------------------------------- finding checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, oldest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainConfigError(f"{path}: not a readable checkpoint state ({exc})") from None


def resolve_resume_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` points at, or None ('latest' with no checkpoint yet)."""
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = list_checkpoints(cfg.output_dir)
        return found[-1] if found else None
    path = Path(cfg.resume_from_checkpoint)
    if not path.is_dir() and (Path(cfg.output_dir) / path).is_dir():
        path = Path(cfg.output_dir) / path
    if not path.is_dir():
        raise TrainConfigError(
            f"--resume_from_checkpoint: {cfg.resume_from_checkpoint} is not a checkpoint folder"
        )
    return path


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse to resume, or write into, checkpoints of a run with another base model or adapter config."""
    resume = resolve_resume_path(cfg)
    to_check = [resume] if resume is not None else list_checkpoints(cfg.output_dir)
    for ckpt in to_check:
        for name in (STATE_NAME, ADAPTER_NAME):
            if not (ckpt / name).is_file():
                raise TrainConfigError(f"{ckpt}: incomplete checkpoint (no {name})")
        problem = _fingerprint_mismatch(read_state(ckpt), cfg)
        if problem:
            action = "resume it" if resume is not None else "train into this --output_dir"
            raise TrainConfigError(
                f"{ckpt} belongs to another run with a {problem}; refusing to {action}. "
                "Use another --output_dir, or the same model and adapter settings."
            )


# ----------------------------------------------------------------------------- RNG states


def capture_rng(noise_generator: torch.Generator | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of this process's RNG states."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    if noise_generator is not None:
        tensors["noise"] = noise_generator.get_state()
    return meta, tensors


def restore_rng(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], noise_generator: torch.Generator | None
) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    if noise_generator is not None and "noise" in tensors:
        noise_generator.set_state(tensors["noise"])


# ----------------------------------------------------------------------------- saving / loading


def trainable_state(models: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every trainable tensor of the (unwrapped) models, keyed `<component>.<parameter name>`, fp32."""
    return {
        f"{component}.{name}": p.detach().float().cpu().contiguous()
        for component, model in models.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a state dict (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_trainable_state(
    models: Mapping[str, torch.nn.Module], state: Mapping[str, torch.Tensor], source: str
) -> None:
    own = {
        f"{component}.{name}": p
        for component, model in models.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise TrainConfigError(
            f"{source}: adapter tensors do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for key, p in own.items():
            if p.shape != state[key].shape:
                raise TrainConfigError(
                    f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(state[key].to(p.dtype))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    noise_generator: torch.Generator | None,
    is_main: bool = True,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write `checkpoint-<step>` atomically; every process must call it (each stores its RNG state)."""
    out = Path(output_dir)
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    meta, tensors = capture_rng(noise_generator)
    adapter = trainable_state(models)
    # Each process records a digest of its adapter: equal digests show the processes stayed in sync.
    meta["adapter_sha256"] = state_digest(adapter)
    (tmp / f"rng-{rank}.json").write_text(json.dumps(meta))
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    barrier()
    if is_main:
        save_file(adapter, str(tmp / ADAPTER_NAME))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_NAME).write_text(json.dumps({**state, "step": step}, indent=2, default=str))
        if final.exists():
            old = out / f".{CHECKPOINT_PREFIX}{step}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    barrier()
    return final


def load_checkpoint(
    checkpoint: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    noise_generator: torch.Generator | None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore adapter, optimizer, schedule and this process's RNG state; return the saved state.json."""
    ckpt = Path(checkpoint)
    state = read_state(ckpt)
    load_trainable_state(models, load_file(str(ckpt / ADAPTER_NAME)), str(ckpt / ADAPTER_NAME))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    lr_scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_json = ckpt / f"rng-{rank}.json"
    if not rng_json.is_file():  # resumed with more processes than saved: reuse rank 0's state
        rng_json = ckpt / "rng-0.json"
    meta = json.loads(rng_json.read_text())
    tensors = load_file(str(rng_json.with_suffix(".safetensors")))
    restore_rng(meta, tensors, noise_generator)
    return state


def prune_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most `limit` remain; return the deleted folders."""
    if not limit:
        return []
    found = list_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - limit)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
