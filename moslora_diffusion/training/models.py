"""Loading the base model for training, adding the adapters, and encoding prompts the way each architecture does.

SD 1.x/2.x: one CLIP text encoder, its last hidden state conditions the UNet.
SDXL: two encoders, penultimate hidden states concatenated, pooled embedding of the second one plus
size/crop "time ids" as extra conditioning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import architectures, base_models
from ..adapters import add_moslora_adapter, matched_modules
from ..config import MoSLoraConfig
from ..constants import TEXT_ENCODERS as TEXT_COMPONENTS
from ..errors import BaseModelError, TrainConfigError
from ..targets import resolve_targets
from .args import TrainConfig

logger = logging.getLogger(__name__)


def read_model_index(cfg: TrainConfig) -> dict[str, Any]:
    """The base model's model_index.json (local folder, or the hub cache / hub)."""
    path = Path(cfg.pretrained_model_name_or_path).expanduser()
    if path.is_dir():
        file = path / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        file = Path(
            hf_hub_download(cfg.pretrained_model_name_or_path, "model_index.json", revision=cfg.revision)
        )
    return json.loads(file.read_text(encoding="utf-8"))


@dataclass
class Components:
    """The loaded models. `text_encoders` / `tokenizers` have one entry (SD1/2) or two (SDXL)."""

    arch: str
    unet: nn.Module
    vae: nn.Module
    text_encoders: list[nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any  # DDPMScheduler with the base model's schedule and prediction type
    inference_scheduler: Any  # the base model's own scheduler class, for sampling
    adapter_configs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.arch == "sdxl"

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def default_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def text_components(self) -> dict[str, nn.Module]:
        return dict(zip(TEXT_COMPONENTS, self.text_encoders))

    def adapted_models(self) -> dict[str, nn.Module]:
        """Component name -> model, for every model that holds a trainable adapter."""
        models = {"unet": self.unet}
        models.update({k: m for k, m in self.text_components().items() if k in self.adapter_configs})
        return models


def load_components(cfg: TrainConfig, weight_dtype: torch.dtype, device: torch.device) -> Components:
    """Load tokenizers, text encoders, VAE, UNet and schedulers; freeze them; move to `device`.

    A diffusers folder or hub id loads component by component; a single-file checkpoint loads as a
    pipeline through `moslora_diffusion.base_models` (diffusers' ``from_single_file``) and is taken apart.
    """
    if base_models.is_single_file(cfg.pretrained_model_name_or_path):
        comps = _components_of_single_file(cfg, weight_dtype)
    else:
        with base_models.as_base_model_error(cfg.pretrained_model_name_or_path):
            comps = _components_of_folder(cfg, weight_dtype)
    if cfg.pretrained_vae_model_name_or_path:
        from diffusers import AutoencoderKL

        with base_models.as_base_model_error(cfg.pretrained_vae_model_name_or_path):
            comps.vae = AutoencoderKL.from_pretrained(
                cfg.pretrained_vae_model_name_or_path, dtype=weight_dtype
            )
    for model in (comps.unet, comps.vae, *comps.text_encoders):
        odd = next((n for n, p in model.named_parameters() if not p.is_floating_point()), None)
        if odd is not None:
            raise BaseModelError(
                f"{cfg.pretrained_model_name_or_path}: {type(model).__name__} weight '{odd}' is not floating "
                "point; a base model's weights must be"
            )
    for model in (comps.unet, comps.vae, *comps.text_encoders):
        model.requires_grad_(False)
        model.eval()
    # The SDXL VAE overflows in fp16 unless it is a fixed one: keep it in fp32 then.
    if getattr(comps.vae.config, "force_upcast", False) and weight_dtype == torch.float16:
        comps.vae.to(dtype=torch.float32)
    for model in (comps.unet, comps.vae, *comps.text_encoders):
        model.to(device)
    return comps


def _schedulers(scheduler_config: Any, inference_cls: type, prediction_type: str | None) -> tuple[Any, Any]:
    """(DDPM training scheduler, the model's own sampler) from one scheduler config."""
    from diffusers import DDPMScheduler

    extra = {"prediction_type": prediction_type} if prediction_type else {}
    return (
        DDPMScheduler.from_config(scheduler_config, **extra),
        inference_cls.from_config(scheduler_config, **extra),
    )


def _components_of_folder(cfg: TrainConfig, weight_dtype: torch.dtype) -> Components:
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    name = cfg.pretrained_model_name_or_path
    index = read_model_index(cfg)
    hub = dict(revision=cfg.revision, dtype=weight_dtype)
    unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", variant=cfg.variant, **hub)
    arch = architectures.detect(dict(unet.config), index)
    text_names, tokenizer_names = architectures.spec(arch).text_encoders, architectures.spec(arch).tokenizers
    text_encoders = []
    for sub in text_names:
        cls = getattr(transformers, index[sub][1])
        text_encoders.append(cls.from_pretrained(name, subfolder=sub, variant=cfg.variant, **hub))
    tokenizers = [
        getattr(transformers, index[sub][1]).from_pretrained(name, subfolder=sub, revision=cfg.revision)
        for sub in tokenizer_names
    ]
    vae = None
    if not cfg.pretrained_vae_model_name_or_path:
        vae = AutoencoderKL.from_pretrained(name, subfolder="vae", variant=cfg.variant, **hub)
    scheduler_config = diffusers.DDPMScheduler.load_config(name, subfolder="scheduler", revision=cfg.revision)
    noise_scheduler, inference_scheduler = _schedulers(
        scheduler_config, getattr(diffusers, index["scheduler"][1]), cfg.prediction_type
    )
    return Components(arch, unet, vae, text_encoders, tokenizers, noise_scheduler, inference_scheduler)


def _components_of_single_file(cfg: TrainConfig, weight_dtype: torch.dtype) -> Components:
    pipe = base_models.load_pipeline(
        cfg.pretrained_model_name_or_path,
        config=cfg.config,
        architecture=cfg.architecture,
        prediction_type=cfg.prediction_type,
        dtype=weight_dtype,
    )
    arch = base_models.inspect_checkpoint(cfg.pretrained_model_name_or_path, cfg.architecture).architecture
    text_encoders = [getattr(pipe, name) for name in architectures.spec(arch).text_encoders]
    tokenizers = [getattr(pipe, name) for name in architectures.spec(arch).tokenizers]
    noise_scheduler, inference_scheduler = _schedulers(pipe.scheduler.config, type(pipe.scheduler), None)
    return Components(
        arch, pipe.unet, pipe.vae, text_encoders, tokenizers, noise_scheduler, inference_scheduler
    )


def adapter_config(cfg: TrainConfig, component: str) -> Any:
    """The PEFT config of one component: `MoSLoraConfig` or plain `LoraConfig`."""
    from peft import LoraConfig

    spec = cfg.unet_targets if component == "unet" else cfg.text_encoder_targets
    kwargs = dict(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.rank,
        lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora,
        init_lora_weights="gaussian",
        target_modules=resolve_targets(spec, component),
    )
    if cfg.adapter == "moslora":
        return MoSLoraConfig(mixer_init=cfg.mixer_init, **kwargs)
    return LoraConfig(**kwargs)


def check_targets(cfg: TrainConfig, component: str, model: nn.Module, targets: list[str]) -> None:
    """Every target name must match a Linear / Conv2d of the model, and --rank fit the smallest of them."""
    flag = "--unet_targets" if component == "unet" else "--text_encoder_targets"
    found = matched_modules(model, targets)
    unmatched = [t for t in targets if not matched_modules(model, [t])]
    if unmatched:
        raise TrainConfigError(
            f"{flag}: no Linear or Conv2d layer of the {component} ({type(model).__name__}) is named "
            f"{', '.join(repr(t) for t in unmatched)}; names match a module path or its last parts, "
            "e.g. to_q, ff.net.2, conv1 (UNet) or q_proj, fc1 (text encoders)"
        )
    dims = {
        name: min(m.in_features, m.out_features)
        if isinstance(m, nn.Linear)
        else min(m.in_channels, m.out_channels)
        for name, m in found.items()
    }
    smallest = min(dims, key=dims.get)
    if cfg.rank > dims[smallest]:
        raise TrainConfigError(
            f"--rank {cfg.rank} is larger than the smallest targeted layer of the {component} "
            f"({smallest}: {dims[smallest]} features); a rank above that adds nothing. Use --rank {dims[smallest]} or less"
        )


def add_adapters(cfg: TrainConfig, comps: Components) -> None:
    """Inject the adapters (UNet; text encoders with --train_text_encoder), trainable in fp32."""
    from peft import inject_adapter_in_model

    targets = {"unet": comps.unet}
    if cfg.train_text_encoder:
        targets.update(comps.text_components())
    configs = {component: adapter_config(cfg, component) for component in targets}
    for component, model in targets.items():  # every check before the first adapter is injected
        check_targets(cfg, component, model, configs[component].target_modules)
    for component, model in targets.items():
        conf = configs[component]
        if cfg.adapter == "moslora":
            add_moslora_adapter(model, conf)
        elif hasattr(model, "add_adapter") and type(model).__module__.startswith("diffusers"):
            model.add_adapter(conf)
        else:  # transformers' add_adapter needs a newer peft than exists; inject directly
            inject_adapter_in_model(conf, model)
        comps.adapter_configs[component] = conf
        n_trainable = 0
        for name, p in model.named_parameters():
            trainable = "lora_" in name
            p.requires_grad_(trainable)
            if trainable:
                p.data = p.data.float()
                n_trainable += p.numel()
        if n_trainable == 0:
            raise TrainConfigError(f"no module of the {component} matches the targets {conf.target_modules}")
        logger.info("%s: %d trainable adapter parameters", component, n_trainable)


def tokenize(tokenizers: list[Any], prompts: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded to its `model_max_length`."""
    return [
        tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        for tok in tokenizers
    ]


def encode_tokens(
    arch: str, text_encoders: list[nn.Module], token_ids: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeddings, pooled embeddings or None) as the architecture's pipeline computes them."""
    if arch != "sdxl":
        te = text_encoders[0]
        return te(token_ids[0].to(_device_of(te)))[0], None
    hidden, pooled = [], None
    for te, ids in zip(text_encoders, token_ids):
        out = te(ids.to(_device_of(te)), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder (with projection) gives the pooled text embedding
    return torch.cat(hidden, dim=-1), pooled


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]], crops: list[tuple[int, int]], target_sizes: list[tuple[int, int]]
) -> torch.Tensor:
    """SDXL's micro-conditioning per example: (original h, w, crop top, left, target h, w)."""
    rows = [[*orig, *crop, *target] for orig, crop, target in zip(original_sizes, crops, target_sizes)]
    return torch.tensor(rows, dtype=torch.float32)
