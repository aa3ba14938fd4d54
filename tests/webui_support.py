"""Shared helpers for the web UI tests: a tiny base model on disk and plain LoRA files for it."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> None:
    """Wait until ``proc`` listens on ``port`` (raise if it exits first or the time runs out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the app did not open port {port} within {timeout:.0f} s")


def write_plain_lora(arch: str, path: Path, seed: int = 0, rank: int = 4, text_encoder: bool = False) -> Path:
    """A stock diffusers LoRA file for the tiny `arch` pipeline: PEFT LoRA on the UNet, non-zero B."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from moslora_diffusion.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(arch)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    kwargs = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet)}
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(str(path.parent), weight_name=path.name, **kwargs)
    return path


def make_tiny_setup(root: Path) -> dict[str, Path]:
    """A tiny SD1 base model folder plus an adapters folder with an SD1 LoRA and an SDXL one."""
    from moslora_diffusion.tiny import save_tiny_pipeline

    base = save_tiny_pipeline("sd1", root / "base")
    adapters = root / "adapters"
    write_plain_lora("sd1", adapters / "plain.safetensors", seed=0)
    write_plain_lora("sd1", adapters / "other.safetensors", seed=1)
    write_plain_lora("sdxl", adapters / "xl_only.safetensors", seed=2)
    return {"base": base, "adapters": adapters, "outputs": root / "outputs", "root": root}


class FakeTraining:
    """Stands in for moslora_diffusion.training: emits events, honours should_stop, writes a LoRA file."""

    def __init__(self, lora_source: Path, step_delay: float = 0.0, gate: threading.Event | None = None):
        self.lora_source = lora_source
        self.step_delay = step_delay
        self.gate = gate
        self.configs = []
        self.scorers = []

    def TrainConfig(self, **kwargs):  # noqa: N802 - mirrors the dataclass name
        return SimpleNamespace(**kwargs)

    def validate_config(self, cfg):
        if not Path(cfg.instance_data_dir).is_dir():
            raise ValueError("--instance_data_dir missing")

    def run_training(self, cfg, callback=None, should_stop=None, scorer=None):
        self.configs.append(cfg)
        self.scorers.append(scorer)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        done = 0
        for step in range(1, cfg.max_train_steps + 1):
            if self.gate is not None:
                self.gate.wait(5)
            if should_stop():
                break
            time.sleep(self.step_delay)
            done = step
            callback(SimpleNamespace(kind="step", step=step, max_steps=cfg.max_train_steps, loss=1.0 / step,
                                     lr=cfg.learning_rate, images=None, message=None))  # fmt: skip
            if step % cfg.validation_steps == 0:
                callback(SimpleNamespace(kind="signals", step=step, max_steps=cfg.max_train_steps, loss=None,
                                         lr=None, images=None, message=None,
                                         scores={"step": step, "subject_fit": 1.0 / step, "prompt_shift": 0.01 * step}))  # fmt: skip
                callback(SimpleNamespace(kind="validation", step=step, max_steps=cfg.max_train_steps, loss=None,
                                         lr=None, images=[Image.new("RGB", (32, 32), "green")], message=None))  # fmt: skip
                if scorer is not None:  # what the trainer sends after calling the scorer
                    callback(SimpleNamespace(kind="scores", step=step, max_steps=cfg.max_train_steps, loss=None,
                                             lr=None, images=None, message=None,
                                             scores={"subject fidelity": step / cfg.max_train_steps}))  # fmt: skip
        cancelled = done < cfg.max_train_steps
        weights = None
        if done:  # like the real trainer: a stopped run still writes the adapter of the steps done
            weights = out / "pytorch_lora_weights.safetensors"
            weights.write_bytes(self.lora_source.read_bytes())
        return SimpleNamespace(output_dir=out, weights_path=weights, steps_done=done, cancelled=cancelled,
                               final_loss=1.0 / max(done, 1))  # fmt: skip


def write_native_moslora(base_dir: Path, path: Path, seed: int = 0, architecture: str = "sd1"):
    """A native MoSLoRA file (UNet + text encoder, random mixers) for the pipeline saved in `base_dir`.

    Returns (path, pipe): `pipe` is a fresh copy of the base with the same MoSLoRA layers injected
    (unfolded), the reference the folded, loaded adapter must reproduce.
    """
    from diffusers import DiffusionPipeline

    from moslora_diffusion import MoSLoraConfig, add_moslora_adapter, moslora_state_dict
    from moslora_diffusion.formats import save_moslora_file

    pipe = DiffusionPipeline.from_pretrained(str(base_dir))
    pipe.set_progress_bar_config(disable=True)
    configs = {
        "unet": MoSLoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
        "text_encoder": MoSLoraConfig(
            r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        ),
    }
    gen = torch.Generator().manual_seed(seed)
    for component, config in configs.items():
        model = getattr(pipe, component)
        add_moslora_adapter(model, config, adapter_name="trained")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name or "lora_mixer" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_moslora_file(
        path,
        {c: moslora_state_dict(getattr(pipe, c), "trained") for c in configs},
        configs,
        base_model={"architecture": architecture},
        training={"instance_prompt": "a photo of sks blob", "max_train_steps": 123},
    )
    return path, pipe
