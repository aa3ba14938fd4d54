"""Opening a base model: a diffusers folder, a hub id, or a single-file checkpoint.

A *single-file checkpoint* is one ``.safetensors`` file in the original (LDM / SGM) key layout, as model
sites and AUTOMATIC1111 hand them out. :func:`inspect_checkpoint` reads its header only (no tensor, never
a pickle) and tells the architecture and prediction type; :func:`load_pipeline` opens either kind with
diffusers (``from_pretrained`` or ``from_single_file``), so training, the web UI and user code get the same
pipeline from the same rules.

A single file holds weights, not configs or tokenizers: diffusers takes those from a diffusers-format
folder of the same architecture. ``config`` names such a local folder (offline use); without it diffusers
looks for its default repository of the architecture in the hub cache, or downloads its configs
(a few kB) when online.

Prediction type: the file does not store it. ``v_prediction`` when the file carries the ``v_pred``
marker key (some SDXL v-prediction models) or is SD 2.x (the 768 px SD 2.x models are v-prediction;
pass ``prediction_type="epsilon"`` for SD 2.x *base*), else ``epsilon``; an explicit value wins.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import architectures
from .constants import PREDICTION_TYPES
from .errors import BaseModelError, MoSLoraError, MoSLoraFormatError
from .formats.safetensors_io import PICKLE_SUFFIXES, read_header
from .jsonio import read_json_file
from .quiet import dropping

__all__ = [
    "PREDICTION_TYPES",
    "Checkpoint",
    "is_single_file",
    "inspect_checkpoint",
    "check_config_folder",
    "config_folders",
    "config_for",
    "folder_architecture",
    "list_single_files",
    "load_pipeline",
    "as_base_model_error",
    "file_sha256",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Text-encoder key prefixes of the original layouts, in the order they are checked (SDXL's first).
_TEXT_PREFIXES = tuple(
    (prefix, arch)
    for arch in ("sdxl", "sd2", "sd1")
    for prefix in architectures.spec(arch).single_file_text_prefixes
)
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_CROSS_ATTENTION_KEY = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")


@dataclass(frozen=True)
class Checkpoint:
    """What a single-file checkpoint's header says: architecture and prediction type (after overrides)."""

    path: Path
    architecture: str
    prediction_type: str
    detected_architecture: str
    detected_prediction_type: str

    @property
    def pipeline_class_name(self) -> str:
        return architectures.spec(self.architecture).pipeline_class


def is_single_file(name_or_path: str | os.PathLike | None) -> bool:
    """True when ``name_or_path`` names a file (a checkpoint), not a folder or a hub id."""
    if not name_or_path:
        return False
    p = Path(name_or_path).expanduser()
    return p.is_file() or p.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BaseModelError(
            f"{path}: a {path.suffix} checkpoint is a Python pickle, and unpickling can run any code, so this "
            "toolkit never opens one. Most model sites offer the same model as .safetensors; otherwise convert "
            "it once with PyTorch's restricted loader (weights only, no code runs):\n"
            '  python -c "import sys, torch; from safetensors.torch import save_file; '
            "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
            'save_file({k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, sys.argv[2])" '
            f"{path.name} {path.with_suffix('.safetensors').name}\n"
            "If weights_only=True refuses the file, it holds more than tensors: do not load it."
        )


def _detect(path: Path, tensors: dict[str, dict], metadata: dict[str, str]) -> str:
    for prefix, arch in _TEXT_PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            return arch
    widths = {
        tensors[k]["shape"][-1] for k in tensors if _CROSS_ATTENTION_KEY.match(k) and tensors[k]["shape"]
    }
    for width in widths:
        arch = architectures.from_text_width(width)
        if arch:
            return arch
    from_meta = architectures.normalize(metadata.get("modelspec.architecture"))
    if from_meta:
        return from_meta
    raise BaseModelError(
        f"{path}: cannot tell the architecture (no text-encoder keys, cross-attention widths "
        f"{sorted(widths) or 'none'}); pass --architecture sd1, sd2 or sdxl"
    )


def _check_components(path: Path, tensors: dict[str, dict], arch: str) -> None:
    """Every component of a single file is there, under the names diffusers' converter reads."""
    needed = {"UNet": (UNET_PREFIX + "input_blocks.0.0.weight", UNET_PREFIX + "out.2.weight"),
              "VAE": (VAE_PREFIX + "encoder.conv_in.weight", VAE_PREFIX + "decoder.conv_out.weight")}  # fmt: skip
    for component, keys in needed.items():
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise BaseModelError(
                f"{path}: the {component} is missing or incomplete (no {missing[0]}); a single file must hold "
                "the UNet, the VAE and the text encoder(s)"
            )
    clip = architectures.spec(arch).single_file_clip_prefix
    if clip is not None and not any(k.startswith(clip + "text_model.") for k in tensors):
        found = any(k.startswith(clip) for k in tensors)
        raise BaseModelError(
            f"{path}: the CLIP text encoder's keys "
            + (f"lack '{clip}text_model.' (written by a converter under transformers 5?)" if found
               else f"are missing (no '{clip}text_model.*')")
            + "; diffusers cannot load this text encoder"
        )  # fmt: skip


def inspect_checkpoint(
    path: str | os.PathLike, architecture: str | None = None, prediction_type: str | None = None
) -> Checkpoint:
    """Read a single-file checkpoint's header and tell what it is; raise `BaseModelError` if it isn't one.

    ``architecture`` / ``prediction_type`` override what the header says (a warning-free override: the
    caller asked for it).
    """
    path = Path(path).expanduser()
    _refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise BaseModelError(f"{path}: a single-file base model must be a .safetensors file")
    try:
        metadata, tensors = read_header(path)
    except MoSLoraFormatError as exc:
        raise BaseModelError(str(exc)) from None
    except OSError as exc:
        raise BaseModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not any(k.startswith(UNET_PREFIX) for k in tensors):
        if any(".lora_" in k or "lora_down" in k or "lora_up" in k for k in tensors):
            raise BaseModelError(
                f"{path}: this is an adapter (LoRA) file, not a base model; load it as an adapter instead"
            )
        raise BaseModelError(
            f"{path}: not a Stable Diffusion checkpoint (no '{UNET_PREFIX}*' UNet weights in the original "
            "layout); a diffusers-format model is a folder with model_index.json"
        )
    conv_in = tensors.get(UNET_PREFIX + "input_blocks.0.0.weight", {}).get("shape")
    if conv_in is not None and len(conv_in) != 4:
        raise BaseModelError(
            f"{path}: the UNet's first convolution has shape {conv_in}, not a 4-D conv weight"
        )
    if conv_in and conv_in[1] != 4:
        raise BaseModelError(
            f"{path}: the UNet takes {conv_in[1]} input channels (an inpainting or other special model); "
            "DreamBooth here trains text-to-image models with 4 latent channels"
        )
    odd = [
        k
        for k, info in tensors.items()
        if k.endswith((".weight", ".bias")) and info["dtype"] not in _FLOAT_DTYPES
    ]
    if odd:
        raise BaseModelError(
            f"{path}: '{odd[0]}' holds {tensors[odd[0]]['dtype']} values; a model's weights must be floating "
            f"point ({len(odd)} such tensors)"
        )
    detected = _detect(path, tensors, metadata)
    _check_components(path, tensors, architectures.normalize(architecture) or detected)
    detected_pt = "v_prediction" if ("v_pred" in tensors or detected == "sd2") else "epsilon"
    if architecture is not None and architectures.normalize(architecture) is None:
        raise BaseModelError(f"architecture must be sd1, sd2 or sdxl, got {architecture!r}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise BaseModelError(f"prediction type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return Checkpoint(
        path=path,
        architecture=architectures.normalize(architecture) or detected,
        prediction_type=prediction_type or detected_pt,
        detected_architecture=detected,
        detected_prediction_type=detected_pt,
    )


def folder_architecture(folder: str | os.PathLike) -> str:
    """The architecture of a diffusers folder, from its model_index.json and UNet config (small JSON files)."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise BaseModelError(f"{folder}: not a diffusers-format folder (no model_index.json)")
    index = read_json_file(folder / "model_index.json", BaseModelError)
    unet_config = folder / "unet" / "config.json"
    unet = read_json_file(unet_config, BaseModelError) if unet_config.is_file() else {}
    if not isinstance(index, dict) or not isinstance(unet, dict):
        raise BaseModelError(f"{folder}: model_index.json and unet/config.json must hold JSON objects")
    return architectures.detect(unet, index)


def _check_tokenizers(folder: Path, arch: str) -> None:
    """The tokenizer folders a config folder must bring (a single file has none): found and complete."""
    for name in architectures.spec(arch).tokenizers:
        sub = folder / name
        if not (
            (sub / "tokenizer.json").is_file()
            or ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file())
        ):
            raise BaseModelError(
                f"--config {folder}: no usable {name}/ (it needs vocab.json and merges.txt, or tokenizer.json); "
                "a single file holds no tokenizer, so the config folder must"
            )
        config = sub / "tokenizer_config.json"
        if config.is_file() and not isinstance(read_json_file(config, BaseModelError), dict):
            raise BaseModelError(f"{config}: must hold a JSON object")


def check_config_folder(checkpoint: Checkpoint, config: str | os.PathLike | None) -> str | None:
    """The folder (or default hub repository) whose configs and tokenizers ``checkpoint`` is built with.

    ``config`` must be a local diffusers folder of the checkpoint's architecture. Without it, the default
    repository must be in the hub cache unless the hub may be reached (``HF_HUB_OFFLINE`` unset);
    otherwise `BaseModelError` says to pass ``--config``. Reads small JSON files only.
    """
    if config is not None:
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise BaseModelError(
                f"--config {config}: not a diffusers-format folder (no model_index.json); it must hold the "
                "component configs and tokenizers of a model of the same architecture"
            )
        arch = folder_architecture(folder)
        if arch != checkpoint.architecture:
            raise BaseModelError(
                f"--config {config} is an {arch} model but {checkpoint.path.name} is {checkpoint.architecture}; "
                "use a config folder of the same architecture"
            )
        _check_tokenizers(folder, arch)
        return str(folder)
    repo = architectures.spec(checkpoint.architecture).default_config_repo
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "model_index.json")
    if isinstance(cached, str) or not constants.HF_HUB_OFFLINE:
        return None  # diffusers finds (or fetches) the configs itself
    raise BaseModelError(
        f"{checkpoint.path.name}: a single file holds no configs or tokenizer, and the default ones "
        f"({repo}) are not in the hub cache while the hub is offline. Pass --config DIR: a local "
        f"diffusers-format folder of an {checkpoint.architecture} model (its weights are not used, only "
        "model_index.json, the component config.json files, the scheduler config and the tokenizer folders)"
    )


def config_folders(folders: list[str] | None) -> dict[str, str]:
    """Architecture -> config folder, for callers that offer single files of several architectures."""
    found: dict[str, str] = {}
    for folder in folders or []:
        arch = folder_architecture(Path(folder).expanduser())
        if arch in found:
            raise BaseModelError(f"--config: two config folders for {arch}: {found[arch]} and {folder}")
        found[arch] = str(folder)
    return found


def config_for(name_or_path: str | os.PathLike, configs: dict[str, str] | None) -> str | None:
    """The folder of ``configs`` (from :func:`config_folders`) that fits a single file; None otherwise."""
    if not configs or not is_single_file(name_or_path):
        return None
    return configs.get(inspect_checkpoint(name_or_path).architecture)


def list_single_files(folder: str | os.PathLike) -> list[Path]:
    """The single-file base models directly in ``folder`` (headers read; adapters and other files skipped)."""
    found = []
    for p in sorted(Path(folder).glob("*.safetensors")):
        if p.name.startswith("."):
            continue
        try:
            inspect_checkpoint(p)
        except BaseModelError:
            continue
        found.append(p)
    return found


@contextmanager
def as_base_model_error(source: str | os.PathLike) -> Iterator[None]:
    """Whatever diffusers or transformers raise while building a pipeline becomes a `BaseModelError`."""
    try:
        yield
    except MoSLoraError:
        raise
    except Exception as exc:  # noqa: BLE001 - the loaders raise anything from KeyError to OSError
        if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
            raise
        text = " ".join(str(exc).split())
        raise BaseModelError(
            f"{source}: cannot be loaded as a Stable Diffusion pipeline ({type(exc).__name__}: "
            f"{text[:300] + '...' if len(text) > 300 else text})"
        ) from exc


def load_pipeline(
    name_or_path: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    architecture: str | None = None,
    prediction_type: str | None = None,
    dtype: Any = None,
    **kwargs: Any,
) -> Any:
    """A diffusers text-to-image pipeline from a folder, a hub id or a single ``.safetensors`` checkpoint.

    Single files go through ``from_single_file`` with the configs of :func:`check_config_folder`; the
    pipeline's scheduler gets the checkpoint's prediction type. ``prediction_type`` also overrides a
    folder's scheduler. ``kwargs`` go to the diffusers loader (components to replace, ``variant``…).
    """
    import diffusers

    checkpoint = None
    if is_single_file(name_or_path):
        checkpoint = inspect_checkpoint(name_or_path, architecture, prediction_type)
        config_source = check_config_folder(checkpoint, config)
        cls = getattr(diffusers, checkpoint.pipeline_class_name)
        if kwargs.pop("variant", None) or kwargs.pop("revision", None):
            raise BaseModelError(f"{checkpoint.path}: a single file has no weight variants or revisions")
        kwargs.pop("use_safetensors", None)  # it is one by construction
        if checkpoint.architecture != "sdxl":
            kwargs.setdefault("safety_checker", None)
            kwargs.setdefault("requires_safety_checker", False)
        # diffusers casts the single-file VAE with `.to(dtype)` itself and then warns about its own cast,
        # listing no module ("should be kept in float32: []"): nothing a user can act on.
        with (
            dropping("diffusers.models.modeling_utils", ["should be kept in float32: []"]),
            as_base_model_error(checkpoint.path),
        ):
            pipe = cls.from_single_file(
                str(checkpoint.path), config=config_source, dtype=dtype, local_files_only=config_source is not None,
                **kwargs,
            )  # fmt: skip
        prediction_type = checkpoint.prediction_type
    else:
        if architecture is not None:
            raise BaseModelError(
                "--architecture is for single-file checkpoints; a diffusers folder's architecture comes from "
                "its configs"
            )
        with as_base_model_error(name_or_path):
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(name_or_path), dtype=dtype, **kwargs)
    if prediction_type is not None and pipe.scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, prediction_type=prediction_type
        )
    return pipe


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what AUTOMATIC1111 calls the model hash; its short form is the first 10)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)
