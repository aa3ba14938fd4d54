"""The native MoSLoRA file format, version 1: writer, reader and validator.

One ``.safetensors`` file holding, for every adapted module,
``{component}.{module_path}.lora_A.weight`` / ``.lora_mixer.weight`` / ``.lora_B.weight`` and the
metadata ``format="moslora"``, ``moslora_version="1"``, ``moslora_config`` (JSON per component) and
optionally ``base_model`` and ``training`` (JSON). docs/formats.md ("The native file format") describes it in full.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import architectures
from ..constants import (
    ARCHITECTURES,
    COMPONENTS,
    DEFAULT_MIXER_INIT,
    LEGACY_MIXER_INIT,
    MIXER_INITS,
    MOSLORA_WEIGHTS_NAME,
)
from ..errors import MoSLoraFormatError
from ..functional import check_shapes, fold_mixer, lora_scale, resolve_rank_alpha
from ..jsonio import parse_json, text_safe
from .naming import is_text_encoder, path_variants, strip_text_model
from .safetensors_io import read_header, read_safetensors, write_safetensors_atomic

FORMAT_TAG = "moslora"
FORMAT_VERSION = "1"
PARTS = ("lora_A", "lora_mixer", "lora_B")
ADAPTER_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_METADATA_JSON_CHARS = 1024 * 1024  # a moslora_config, base_model or training entry
FLOAT16_MAX = 65504.0  # the largest weight change a float16 pipeline can hold

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "MOSLORA_WEIGHTS_NAME",
    "ARCHITECTURES",
    "ComponentConfig",
    "AdapterModule",
    "MoSLoraFile",
    "split_key",
    "save_moslora_file",
    "load_moslora_file",
    "resolve_weights_path",
    "base_model_info",
    "is_moslora_metadata",
]


def _fail(source: str | None, message: str) -> MoSLoraFormatError:
    return MoSLoraFormatError(f"{source or '<state dict>'}: {message}")


@dataclass
class ComponentConfig:
    """The adapter hyper-parameters of one component (what ``moslora_config`` stores per component).

    The one place that turns a PEFT config into this JSON entry (:meth:`from_lora_config`), parses it back
    (:meth:`from_dict`) and writes it (:meth:`to_dict`).
    """

    r: int
    lora_alpha: float
    use_rslora: bool = False
    mixer_init: str = DEFAULT_MIXER_INIT
    target_modules: list[str] | str = field(default_factory=list)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_lora_config(cls, cfg: Any) -> ComponentConfig:
        """Build from a ``peft.LoraConfig`` / ``MoSLoraConfig`` (or anything with the same attributes)."""
        targets = getattr(cfg, "target_modules", None) or []
        targets = targets if isinstance(targets, str) else sorted(targets)
        return cls(
            r=int(cfg.r),
            lora_alpha=float(cfg.lora_alpha),
            use_rslora=bool(getattr(cfg, "use_rslora", False)),
            mixer_init=str(getattr(cfg, "mixer_init", LEGACY_MIXER_INIT)),
            target_modules=targets,
            rank_pattern=dict(getattr(cfg, "rank_pattern", None) or {}),
            alpha_pattern=dict(getattr(cfg, "alpha_pattern", None) or {}),
        )

    @classmethod
    def from_dict(cls, data: Any, where: str = "moslora_config") -> ComponentConfig:
        """Parse and check one component entry of ``moslora_config``; raise MoSLoraFormatError naming ``where``."""
        if not isinstance(data, Mapping):
            raise MoSLoraFormatError(f"{where} must be a JSON object, got {type(data).__name__}")
        for key in ("r", "lora_alpha"):
            if key not in data:
                raise MoSLoraFormatError(f"{where} lacks '{key}'")
        r, alpha = data["r"], data["lora_alpha"]
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise MoSLoraFormatError(f"{where}.r must be a positive integer, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise MoSLoraFormatError(f"{where}.lora_alpha must be a finite number, got {alpha!r}")
        use_rslora = data.get("use_rslora", False)
        if not isinstance(use_rslora, bool):
            raise MoSLoraFormatError(f"{where}.use_rslora must be true or false, got {use_rslora!r}")
        mixer_init = data.get("mixer_init", LEGACY_MIXER_INIT)  # files without the entry were Kaiming
        if mixer_init not in MIXER_INITS:
            raise MoSLoraFormatError(f"{where}.mixer_init must be one of {MIXER_INITS}, got {mixer_init!r}")
        targets = data.get("target_modules", [])
        if not isinstance(targets, (str, list)):
            raise MoSLoraFormatError(f"{where}.target_modules must be a list or a string, got {targets!r}")
        patterns = {}
        for key in ("rank_pattern", "alpha_pattern"):
            value = data.get(key) or {}
            if not isinstance(value, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value.values()
            ):
                raise MoSLoraFormatError(f"{where}.{key} must map module paths to numbers, got {value!r}")
            for pattern in value:
                try:
                    re.compile(rf"(.*\.)?({pattern})$")
                except (re.error, RecursionError, OverflowError) as exc:
                    raise MoSLoraFormatError(
                        f"{where}.{key}: {pattern!r} is not a valid pattern ({exc})"
                    ) from None
            patterns[key] = dict(value)
        return cls(
            r=r,
            lora_alpha=float(alpha),
            use_rslora=use_rslora,
            mixer_init=mixer_init,
            target_modules=targets,
            rank_pattern={k: int(v) for k, v in patterns["rank_pattern"].items()},
            alpha_pattern={k: float(v) for k, v in patterns["alpha_pattern"].items()},
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "mixer_init": self.mixer_init,
            "target_modules": self.target_modules,
        }
        if self.rank_pattern:
            data["rank_pattern"] = self.rank_pattern
        if self.alpha_pattern:
            data["alpha_pattern"] = self.alpha_pattern
        return data

    def rank_alpha(self, component: str, module_path: str) -> tuple[int, float]:
        """(rank, alpha) of a module after pattern overrides; both CLIP spellings are tried."""
        variants = path_variants(component, module_path)
        return resolve_rank_alpha(
            module_path, self.r, self.lora_alpha, self.rank_pattern, self.alpha_pattern, variants[1:]
        )

    def scale(self, component: str, module_path: str) -> float:
        r, alpha = self.rank_alpha(component, module_path)
        return lora_scale(r, alpha, self.use_rslora)


class AdapterModule(NamedTuple):
    """One adapted module of a MoSLoRA file: ``delta = scale · B · M · A``."""

    component: str
    module_path: str
    A: torch.Tensor
    M: torch.Tensor
    B: torch.Tensor
    scale: float


def split_key(key: str) -> tuple[str, str, str] | None:
    """Split ``{component}.{module_path}.{part}.weight`` into its three parts, or return None."""
    if not key.endswith(".weight"):
        return None
    stem = key[: -len(".weight")]
    for part in PARTS:
        if stem.endswith("." + part):
            component, _, module_path = stem[: -len(part) - 1].partition(".")
            if component and module_path:
                return component, module_path, part
    return None


def is_moslora_metadata(metadata: Mapping[str, str] | None) -> bool:
    return bool(metadata) and metadata.get("format") == FORMAT_TAG


def _parse_json(source: str | None, metadata: Mapping[str, str], key: str) -> Any:
    where = f"{source or '<adapter>'}: metadata '{key}' is not valid JSON"
    # NaN / Infinity parse: the config's own checks name the field that holds one
    return parse_json(metadata[key], where, MoSLoraFormatError, MAX_METADATA_JSON_CHARS, allow_nonfinite=True)


@dataclass
class MoSLoraFile:
    """A MoSLoRA adapter in memory: tensors in native key spelling plus its metadata."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, ComponentConfig]
    base_model: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    path: str | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_state_dicts(
        cls,
        state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
        configs: Mapping[str, Any],
        base_model: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
    ) -> MoSLoraFile:
        """Build from per-component PEFT state dicts and configs.

        ``state_dicts`` maps a component (``unet``, ``text_encoder``, ``text_encoder_2``) to what
        ``peft.get_peft_model_state_dict(model, adapter_name=...)`` returns for it (keys such as
        ``down_blocks.0....to_q.lora_A.weight``); ``configs`` maps the same components to a
        ``MoSLoraConfig`` / ``LoraConfig``, a :class:`ComponentConfig` or its dict form.
        """
        tensors: dict[str, torch.Tensor] = {}
        parsed: dict[str, ComponentConfig] = {}
        for component, sd in state_dicts.items():
            if not sd:
                continue
            if component not in configs:
                raise MoSLoraFormatError(f"no config given for component '{component}'")
            for key, value in sd.items():
                tensors[f"{component}.{key}"] = value
            cfg = configs[component]
            if isinstance(cfg, ComponentConfig):
                parsed[component] = cfg
            elif isinstance(cfg, Mapping):
                parsed[component] = ComponentConfig.from_dict(cfg, f"config of '{component}'")
            else:
                parsed[component] = ComponentConfig.from_lora_config(cfg)
        result = cls(
            tensors, parsed, dict(base_model) if base_model else None, dict(training) if training else None
        )
        result.validate()
        return result

    # ----------------------------------------------------------------- views
    @property
    def components(self) -> list[str]:
        return [c for c in COMPONENTS if c in self.config] + [c for c in self.config if c not in COMPONENTS]

    def module_index(self) -> dict[tuple[str, str], dict[str, str]]:
        """Map (component, module_path) to {part: tensor key}, in file order."""
        index: dict[tuple[str, str], dict[str, str]] = {}
        for key in self.tensors:
            parts = split_key(key)
            if parts is not None:
                index.setdefault(parts[:2], {})[parts[2]] = key
        return index

    def modules(self) -> Iterator[AdapterModule]:
        """Iterate (component, module_path, A, M, B, scale) over every adapted module."""
        for (component, path), keys in self.module_index().items():
            yield AdapterModule(
                component,
                path,
                self.tensors[keys["lora_A"]],
                self.tensors[keys["lora_mixer"]],
                self.tensors[keys["lora_B"]],
                self.config[component].scale(component, path),
            )

    @property
    def num_modules(self) -> int:
        return len(self.module_index())

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def architecture(self) -> str | None:
        return (self.base_model or {}).get("architecture")

    def metadata(self) -> dict[str, str]:
        meta = {
            "format": FORMAT_TAG,
            "moslora_version": FORMAT_VERSION,
            "moslora_config": json.dumps(
                {c: self.config[c].to_dict() for c in self.components}, sort_keys=True
            ),
        }
        if self.base_model:
            meta["base_model"] = json.dumps(text_safe(self.base_model), sort_keys=True)
        if self.training:
            meta["training"] = json.dumps(text_safe(self.training), sort_keys=True, default=str)
        return meta

    # ----------------------------------------------------------------- checks and IO
    def validate(self) -> None:
        """Raise :class:`MoSLoraFormatError` naming the file and key for anything inconsistent."""
        src = self.path
        if not self.tensors:
            raise _fail(src, "contains no adapter tensors")
        for component, cfg in self.config.items():
            if component not in COMPONENTS:
                raise _fail(
                    src,
                    f"moslora_config names unknown component '{component}' (expected one of {COMPONENTS})",
                )
            if not isinstance(cfg, ComponentConfig):
                raise _fail(src, f"moslora_config entry for '{component}' is not a ComponentConfig")
        for key, value in self.tensors.items():
            parts = split_key(key)
            if parts is None:
                raise _fail(
                    src,
                    f"unexpected key '{key}' (expected '<component>.<module>.lora_A|lora_mixer|lora_B.weight')",
                )
            if parts[0] not in COMPONENTS:
                raise _fail(
                    src, f"key '{key}': unknown component '{parts[0]}' (expected one of {COMPONENTS})"
                )
            if parts[0] not in self.config:
                raise _fail(src, f"key '{key}': component '{parts[0]}' has no entry in moslora_config")
            if not isinstance(value, torch.Tensor) or value.dtype not in ADAPTER_DTYPES:
                raise _fail(
                    src,
                    f"key '{key}': expected float16, bfloat16, float32 or float64, got {getattr(value, 'dtype', value)}",
                )
            if not torch.isfinite(value).all():
                raise _fail(src, f"key '{key}': contains NaN or infinite values")
        for (component, path), keys in self.module_index().items():
            missing = [p for p in PARTS if p not in keys]
            if missing:
                raise _fail(
                    src, f"module '{component}.{path}' lacks {', '.join(p + '.weight' for p in missing)}"
                )
            A, M, B = (self.tensors[keys[p]] for p in PARTS)
            problem = check_shapes(A, M, B)
            if problem:
                raise _fail(
                    src,
                    f"module '{component}.{path}': inconsistent shapes lora_A {tuple(A.shape)}, "
                    f"lora_mixer {tuple(M.shape)}, lora_B {tuple(B.shape)}: {problem}",
                )
            r, alpha = self.config[component].rank_alpha(component, path)
            if A.shape[0] != r:
                raise _fail(
                    src,
                    f"key '{keys['lora_A']}': rank {A.shape[0]} (shape {tuple(A.shape)}) does not match rank {r} "
                    f"from moslora_config['{component}'] (r / rank_pattern)",
                )
            self._check_fold_finite(component, path, A, M, B, src)
        self._check_one_spelling(src)
        arch = self.architecture
        if arch is not None and arch not in ARCHITECTURES:
            raise _fail(src, f"base_model architecture {arch!r} is not one of {ARCHITECTURES}")

    def _check_one_spelling(self, src: str | None) -> None:
        """A text-encoder module stored under both CLIP spellings (with and without ``text_model.``) is one
        module twice: every reader would silently keep only one of them."""
        seen: dict[tuple[str, str], str] = {}
        for component, path in self.module_index():
            key = (component, strip_text_model(path) if is_text_encoder(component) else path)
            if key in seen:
                raise _fail(
                    src,
                    f"module '{component}.{key[1]}' is stored twice ('{seen[key]}' and '{path}'); keep one spelling",
                )
            seen[key] = path

    def _check_fold_finite(
        self, component: str, path: str, A: torch.Tensor, M: torch.Tensor, B: torch.Tensor, src: str | None
    ) -> None:
        """The scale, the folded up weights s·B·M and the weight change s·B·M·A must stay finite, and the
        change within float16's range (where pipelines usually run): else the adapter draws black images."""
        scale = self.config[component].scale(component, path)
        if not math.isfinite(scale):
            raise _fail(src, f"module '{component}.{path}': the scale alpha/r is {scale}")
        folded = fold_mixer(M.double(), B.double(), scale).flatten(1)
        a = A.double().flatten(1)
        # |(B'A)_ij| <= |B'_i| |A_:j| (Cauchy-Schwarz): the exact change is computed only when the bound is high.
        bound = float(folded.norm(dim=1).max() * a.norm(dim=0).max())
        if not bound <= FLOAT16_MAX:
            largest = float((folded @ a).abs().max())
            if not largest <= FLOAT16_MAX:  # also catches NaN and inf
                raise _fail(
                    src,
                    f"module '{component}.{path}': the weight change scale·B·M·A would overflow "
                    f"(max |scale·B·M·A| = {largest:.3g} with scale {scale:.3g}; float16 holds "
                    f"{FLOAT16_MAX:g}); the adapter would give NaN or black images",
                )

    def save(self, path: str | os.PathLike) -> Path:
        """Validate and write atomically; a directory gets ``moslora_weights.safetensors`` inside it."""
        self.validate()
        target = Path(path)
        if target.is_dir() or str(path).endswith(os.sep):
            target = target / MOSLORA_WEIGHTS_NAME
        if target.suffix != ".safetensors":
            raise MoSLoraFormatError(f"{target}: MoSLoRA files must end in .safetensors")
        written = write_safetensors_atomic(target, self.tensors, self.metadata())
        self.path = str(written)
        return written

    @classmethod
    def from_tensors_and_metadata(
        cls, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None, source: str | None = None
    ) -> MoSLoraFile:
        """Parse and validate a native file's tensors and metadata."""
        metadata = metadata or {}
        tag = metadata.get("format")
        if tag != FORMAT_TAG:
            hint = (
                " It looks like a plain LoRA file; load it with load_lora_weights()."
                if any(".lora" in k for k in tensors) and not any("lora_mixer" in k for k in tensors)
                else ""
            )
            raise _fail(
                source, f"not a MoSLoRA file (metadata 'format' is {tag!r}, expected '{FORMAT_TAG}').{hint}"
            )
        config, base_model, training = parse_native_metadata(metadata, source)
        result = cls(tensors, config, base_model, training, source)
        result.validate()
        return result


def parse_native_metadata(
    metadata: Mapping[str, str], source: str | None
) -> tuple[dict[str, ComponentConfig], dict[str, Any] | None, dict[str, Any] | None]:
    """(config per component, base_model, training) of a native file's metadata, checked; the header check
    and the loader both read it here, so a file the picker accepts is one the loader accepts."""
    version = metadata.get("moslora_version")
    if version != FORMAT_VERSION:
        raise _fail(
            source,
            f"unsupported moslora_version {version!r}; this version of moslora-diffusion reads '1'",
        )
    if "moslora_config" not in metadata:
        raise _fail(source, "metadata lacks 'moslora_config'")
    raw_config = _parse_json(source, metadata, "moslora_config")
    if not isinstance(raw_config, dict) or not raw_config:
        raise _fail(source, "metadata 'moslora_config' must be a non-empty JSON object of components")
    config = {}
    for component, entry in raw_config.items():
        try:
            config[component] = ComponentConfig.from_dict(entry, f"moslora_config['{component}']")
        except ValueError as exc:
            raise _fail(source, str(exc)) from None
    base_model = _parse_json(source, metadata, "base_model") if "base_model" in metadata else None
    training = _parse_json(source, metadata, "training") if "training" in metadata else None
    for key, value in (("base_model", base_model), ("training", training)):
        if value is not None and not isinstance(value, dict):
            raise _fail(source, f"metadata '{key}' must be a JSON object")
    return config, base_model, training


def base_model_info(
    pipe: Any, name_or_path: str | None = None, hash: str | None = None, architecture: str | None = None
) -> dict[str, Any]:
    """The ``base_model`` metadata for a pipeline: architecture, name/path, hash and the UNet block layout.

    The architecture comes from :func:`moslora_diffusion.architectures.detect_pipeline` unless
    ``architecture`` overrides it. The layout (``unet_config``) lets the kohya export name SDXL blocks
    correctly for non-standard UNets.
    """
    if architecture is None:
        architecture = architectures.detect_pipeline(pipe)
    if architecture not in ARCHITECTURES:
        raise MoSLoraFormatError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    info: dict[str, Any] = {"architecture": architecture}
    if name_or_path is None:
        name_or_path = getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None)
    if name_or_path:
        info["name"] = str(name_or_path)
    if hash:
        info["hash"] = hash
    cfg = pipe.unet.config
    info["unet_config"] = {
        "layers_per_block": cfg.layers_per_block
        if isinstance(cfg.layers_per_block, int)
        else list(cfg.layers_per_block),
        "down_block_types": list(cfg.down_block_types),
        "up_block_types": list(cfg.up_block_types),
    }
    return info


def resolve_weights_path(path: str | os.PathLike, weight_name: str | None = None) -> Path:
    """A directory means ``weight_name`` (default ``moslora_weights.safetensors``) inside it."""
    p = Path(path)
    if p.is_dir():
        p = p / (weight_name or MOSLORA_WEIGHTS_NAME)
    elif weight_name is not None and not p.exists():
        p = p / weight_name
    return p


def save_moslora_file(
    path: str | os.PathLike,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    configs: Mapping[str, Any],
    base_model: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write a native MoSLoRA v1 file atomically and return its path.

    ``state_dicts`` / ``configs``: per component, see :meth:`MoSLoraFile.from_state_dicts`.
    """
    return MoSLoraFile.from_state_dicts(state_dicts, configs, base_model, training).save(path)


def load_moslora_file(path: str | os.PathLike, weight_name: str | None = None) -> MoSLoraFile:
    """Read and validate a native MoSLoRA file (a directory means ``moslora_weights.safetensors`` in it)."""
    p = resolve_weights_path(path, weight_name)
    metadata, infos = read_header(p)
    if not is_moslora_metadata(metadata):
        # Diagnose from the header alone, before loading any tensor (only key names are looked at).
        MoSLoraFile.from_tensors_and_metadata(dict.fromkeys(infos), metadata, str(p))
    tensors, metadata = read_safetensors(p)
    return MoSLoraFile.from_tensors_and_metadata(tensors, metadata, str(p))
