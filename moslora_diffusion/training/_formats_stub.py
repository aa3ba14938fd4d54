"""Temporary stand-in for `moslora_diffusion.formats` until that branch is merged (native + diffusers only)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

MOSLORA_WEIGHTS_NAME = "moslora_weights.safetensors"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "lora_kohya.safetensors"


def write_safetensors_atomic(path, tensors, metadata=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


class MoSLoraFile:
    def __init__(self, tensors, config, base_model, training):
        self.tensors, self.config, self.base_model, self.training = tensors, config, base_model, training

    @classmethod
    def from_state_dicts(cls, state_dicts, configs, base_model=None, training=None):
        tensors = {f"{c}.{k}": v for c, sd in state_dicts.items() for k, v in sd.items()}
        conf = {c: configs[c] for c in state_dicts}
        return cls(tensors, conf, base_model, training)

    def _component_dict(self, c):
        cfg = self.config[c]
        return {
            "r": int(cfg.r),
            "lora_alpha": float(cfg.lora_alpha),
            "use_rslora": bool(cfg.use_rslora),
            "mixer_init": getattr(cfg, "mixer_init", "kaiming"),
            "target_modules": sorted(cfg.target_modules),
        }

    def save(self, path) -> Path:
        meta = {
            "format": "moslora",
            "moslora_version": "1",
            "moslora_config": json.dumps({c: self._component_dict(c) for c in self.config}),
        }
        if self.base_model:
            meta["base_model"] = json.dumps(self.base_model, default=str)
        if self.training:
            meta["training"] = json.dumps(self.training, default=str)
        return write_safetensors_atomic(Path(path) / MOSLORA_WEIGHTS_NAME, self.tensors, meta)


def to_diffusers_state_dict(adapter: MoSLoraFile, dtype=None) -> dict[str, torch.Tensor]:
    out = {}
    for key, A in adapter.tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        c, _, path = stem.partition(".")
        cfg = adapter.config[c]
        s = cfg.lora_alpha / (cfg.r**0.5 if cfg.use_rslora else cfg.r)
        M = adapter.tensors[stem + ".lora_mixer.weight"]
        B = adapter.tensors[stem + ".lora_B.weight"]
        folded = ((B.flatten(1) @ M) * s).reshape(B.shape)
        if c != "unet" and not path.startswith("text_model."):
            path = "text_model." + path
        out[f"{c}.{path}.lora_A.weight"] = A
        out[f"{c}.{path}.lora_B.weight"] = folded
    return out


def export_adapter(src, dst, format, architecture=None, unet_config=None, dtype=None):
    raise NotImplementedError("kohya export needs moslora_diffusion.formats (not merged yet)")
