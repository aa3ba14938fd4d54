"""``pipe.load_moslora_weights()``: fold a MoSLoRA file and hand it to diffusers' own LoRA machinery.

The mixer folds away exactly (``s · B · M · A = (s · B · M) · A``), so a MoSLoRA adapter loads as an
ordinary rank-r LoRA with alpha = r. Handing the folded state dict to the pipeline's stock
``load_lora_weights`` keeps ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``disable_lora``,
``unload_lora_weights``, ``cross_attention_kwargs={"scale": ...}`` and text-encoder LoRA scaling
working exactly as for any LoRA. Everything is checked against the pipeline before any layer is touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import architectures
from .constants import DIFFUSERS_WEIGHTS_NAME, MOSLORA_WEIGHTS_NAME, TEXT_ENCODERS
from .errors import AdapterMismatchError, MoSLoraFormatError
from .formats.export import folded_modules
from .formats.inspect import AdapterHeader, ModuleShape, header_of_state_dict, read_adapter_header
from .formats.naming import kohya_module_name, path_variants
from .formats.native import FORMAT_TAG, FORMAT_VERSION, MoSLoraFile, load_moslora_file
from .formats.safetensors_io import check_not_pickle
from .quiet import adding_an_adapter, dropping

__all__ = [
    "install_pipeline_methods",
    "load_moslora_weights",
    "fold_for_pipeline",
    "check_fit",
    "check_adapter_fits",
    "check_file_fits",
]


def _base_layer(module: nn.Module) -> nn.Module:
    """The original layer under a PEFT tuner wrapper (a module already carrying another adapter)."""
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def _expected_shapes(layer: nn.Module, r: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    if isinstance(layer, nn.Linear):
        return (r, layer.in_features), (layer.out_features, r)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return (r, layer.in_channels, *layer.kernel_size), (layer.out_channels, r, 1, 1)
    return None


def _kohya_table(pipe: Any, arch: str, component: str, model: nn.Module) -> dict[str, str]:
    """kohya name -> module path for every Linear / Conv2d of one component."""
    unet_config = dict(pipe.unet.config) if component == "unet" else None
    table = {}
    for path, module in model.named_modules():
        if isinstance(_base_layer(module), (nn.Linear, nn.Conv2d)) and "lora_" not in path:
            try:
                table[kohya_module_name(arch, component, path, unet_config)] = path
            except ValueError:  # no kohya spelling exists for this module
                continue
    return table


def check_fit(
    pipe: Any,
    modules: Iterable[ModuleShape],
    source: str,
    kind: str = "moslora",
    architecture: str | None = None,
) -> dict[tuple[str, str], str]:
    """The fit check: does every module of an adapter exist in ``pipe`` with matching shapes?

    ``modules`` come from a header (:func:`~moslora_diffusion.formats.inspect.read_adapter_header`) or a
    loaded file; ``kind`` "kohya" means their paths are kohya names. ``architecture`` is what the file
    states (None: not stated); it must equal the pipeline's (:func:`architectures.detect_pipeline`).
    Returns each module's path as the model spells it; raises :class:`AdapterMismatchError` naming the
    file, the module and both shapes on the first misfit.
    """
    pipe_arch = architectures.detect_pipeline(pipe)
    if architecture and architecture != pipe_arch:
        raise AdapterMismatchError(
            f"{source} was made for {architecture}, but the pipeline is {pipe_arch}; "
            "pick an adapter trained on this base model"
        )
    tables: dict[str, dict[str, nn.Module]] = {}
    kohya_names: dict[str, dict[str, str]] = {}
    resolved: dict[tuple[str, str], str] = {}
    for mod in modules:
        model = getattr(pipe, mod.component, None)
        if not isinstance(model, nn.Module):
            raise AdapterMismatchError(
                f"{source}: module '{mod.module_path}' targets '{mod.component}', "
                f"which {type(pipe).__name__} does not have"
            )
        if mod.component not in tables:
            tables[mod.component] = dict(model.named_modules())
        table = tables[mod.component]
        if kind == "kohya":
            if mod.component not in kohya_names:
                kohya_names[mod.component] = _kohya_table(pipe, pipe_arch, mod.component, model)
            found = kohya_names[mod.component].get(mod.module_path)
        else:
            found = next((p for p in path_variants(mod.component, mod.module_path) if p in table), None)
        if found is None:
            raise AdapterMismatchError(
                f"{source}: module '{mod.module_path}' does not exist in the pipeline's {mod.component} "
                f"({type(model).__name__}); was the adapter trained for another base model?"
            )
        layer = _base_layer(table[found])
        expected = _expected_shapes(layer, int(mod.a_shape[0]))
        if expected is None:
            raise AdapterMismatchError(
                f"{source}: module '{mod.component}.{found}' is a {type(layer).__name__}; "
                "only Linear and Conv2d layers can be adapted"
            )
        suffixes = (
            (".lora_down.weight", ".lora_up.weight")
            if kind == "kohya"
            else (".lora_A.weight", ".lora_B.weight")
        )
        stem = mod.module_path if kind == "kohya" else f"{mod.component}.{mod.module_path}"
        for suffix, shape, needed in zip(suffixes, (mod.a_shape, mod.b_shape), expected):
            if tuple(shape) != needed:
                raise AdapterMismatchError(
                    f"{source}: key '{stem}{suffix}' has shape {tuple(shape)} "
                    f"but the pipeline's {mod.component}.{found} ({layer}) needs {needed}"
                )
        resolved[(mod.component, mod.module_path)] = found
    return resolved


def check_adapter_fits(pipe: Any, adapter: MoSLoraFile) -> dict[tuple[str, str], str]:
    """:func:`check_fit` for a loaded native file (what ``load_moslora_weights`` runs before any change)."""
    modules = [
        ModuleShape(m.component, m.module_path, tuple(m.A.shape), tuple(m.B.shape)) for m in adapter.modules()
    ]
    return check_fit(pipe, modules, adapter.path or "<adapter>", "moslora", adapter.architecture)


def check_file_fits(pipe: Any, path: str | os.PathLike | AdapterHeader) -> AdapterHeader:
    """:func:`check_fit` from the file's header alone (the web UI's picker), or from a header already read;
    returns the header."""
    header = path if isinstance(path, AdapterHeader) else read_adapter_header(path)
    check_fit(pipe, header.modules, str(header.path), header.kind, header.architecture)
    return header


def fold_for_pipeline(pipe: Any, adapter: MoSLoraFile) -> dict[str, torch.Tensor]:
    """Check ``adapter`` against ``pipe`` and return the folded diffusers-style LoRA state dict for it."""
    resolved = check_adapter_fits(pipe, adapter)
    state_dict: dict[str, torch.Tensor] = {}
    for component, path, A, B in folded_modules(adapter):
        model_path = resolved[(component, path)]
        state_dict[f"{component}.{model_path}.lora_A.weight"] = A
        state_dict[f"{component}.{model_path}.lora_B.weight"] = B
    return state_dict


def _adapter_from_dict(state_dict: Mapping[str, torch.Tensor], moslora_config: Any) -> MoSLoraFile:
    if isinstance(moslora_config, str):
        config_json = moslora_config
    else:
        config_json = json.dumps(
            {c: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for c, v in dict(moslora_config).items()}
        )
    metadata = {"format": FORMAT_TAG, "moslora_version": FORMAT_VERSION, "moslora_config": config_json}
    return MoSLoraFile.from_tensors_and_metadata(dict(state_dict), metadata)


def _resolve(
    source: Any, weight_name: str | None, moslora_config: Any
) -> tuple[MoSLoraFile | None, AdapterHeader | None, dict[str, Any] | None]:
    """(adapter, None, None) for MoSLoRA input, or (None, header, load_lora_weights kwargs) for a plain LoRA."""
    if isinstance(source, MoSLoraFile):
        source.validate()
        return source, None, None
    if isinstance(source, Mapping):
        if any("lora_mixer" in k for k in source):
            if moslora_config is None:
                raise MoSLoraFormatError(
                    "<state dict>: has lora_mixer tensors; pass moslora_config={component: config} to fold it"
                )
            return _adapter_from_dict(source, moslora_config), None, None
        header = header_of_state_dict(source)
        return None, header, {"pretrained_model_name_or_path_or_dict": dict(source)}
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"expected a path, a directory, a state dict or a MoSLoraFile, got {type(source).__name__}"
        )

    path = Path(source)
    check_not_pickle(path)
    if weight_name is not None:
        check_not_pickle(weight_name)
    if not path.exists():
        raise MoSLoraFormatError(f"{path}: no such file or directory")
    if path.is_dir():
        candidates = [weight_name] if weight_name else [MOSLORA_WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME]
        found = next((path / n for n in candidates if (path / n).is_file()), None)
        if found is None:
            raise MoSLoraFormatError(f"{path}: directory holds none of {', '.join(candidates)}")
        path = found
    header = read_adapter_header(path)
    if header.kind == "moslora":
        return load_moslora_file(path), None, None
    return None, header, {"pretrained_model_name_or_path_or_dict": str(path.parent), "weight_name": path.name}


def _free_adapter_name(pipe: Any) -> str:
    used = {n for names in pipe.get_list_adapters().values() for n in names}
    i = 0
    while f"default_{i}" in used:
        i += 1
    return f"default_{i}"


def load_moslora_weights(
    self: Any,
    pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor] | MoSLoraFile,
    adapter_name: str | None = None,
    weight_name: str | None = None,
    **kwargs: Any,
) -> str:
    """Load a MoSLoRA adapter (or a plain LoRA) into this pipeline's UNet and text encoders.

    Args:
        pretrained_model_name_or_path_or_dict: a native ``.safetensors`` file, a directory holding
            ``moslora_weights.safetensors``, a :class:`MoSLoraFile`, or a state dict (native keys need
            ``moslora_config=``). Plain LoRA files and dicts are handed to ``load_lora_weights`` unchanged.
        adapter_name: the name for ``set_adapters`` and friends; default ``default_<n>``.
        weight_name: the file to use inside a directory.
        kwargs: ``moslora_config`` for a native state dict; the rest goes to ``load_lora_weights``
            (e.g. ``low_cpu_mem_usage``, ``hotswap``).

    Returns the adapter name. Bad or misfitting input raises :class:`MoSLoraFormatError` /
    :class:`AdapterMismatchError` before the pipeline is changed; pickle files are refused unopened.
    """
    moslora_config = kwargs.pop("moslora_config", None)
    adapter, header, plain = _resolve(pretrained_model_name_or_path_or_dict, weight_name, moslora_config)

    in_use = {n for names in self.get_list_adapters().values() for n in names}
    if adapter_name is not None and adapter_name in in_use and not kwargs.get("hotswap", False):
        raise AdapterMismatchError(
            f"adapter name '{adapter_name}' is already in use; pick another or unload it"
        )
    name = adapter_name or _free_adapter_name(self)

    if adapter is None:
        # Plain LoRA files get the same fit check as native ones, before diffusers touches any layer.
        check_fit(self, header.modules, str(header.path or "<state dict>"), header.kind, header.architecture)
        plain_kwargs = {**plain, **kwargs}
        if isinstance(plain_kwargs["pretrained_model_name_or_path_or_dict"], str):
            plain_kwargs["use_safetensors"] = True  # never fall back to unpickling a .bin
        with _quiet_about_absent_components(self, {m.component for m in header.modules}), adding_an_adapter():
            self.load_lora_weights(adapter_name=name, **plain_kwargs)
        return name

    state_dict = fold_for_pipeline(self, adapter)
    try:
        with (
            _quiet_about_absent_components(self, {m.component for m in adapter.modules()}),
            adding_an_adapter(),
        ):
            self.load_lora_weights(state_dict, adapter_name=name, **kwargs)
    except Exception:
        if name not in in_use:
            _remove_partial_adapter(self, name)
        raise
    return name


def _quiet_about_absent_components(pipe: Any, components: set[str]):
    """diffusers warns "No LoRA keys associated to <TextEncoder>" for every text encoder an adapter leaves
    alone; the fit check has already matched every key, so drop exactly those notices."""
    absent = [
        type(getattr(pipe, c)).__name__
        for c in TEXT_ENCODERS
        if c not in components and getattr(pipe, c, None) is not None
    ]
    return dropping("diffusers.loaders.lora_base", [f"No LoRA keys associated to {n} found" for n in absent])


def _remove_partial_adapter(pipe: Any, name: str) -> None:
    """Best effort: drop a half-loaded adapter so a failure leaves the pipeline as it was."""
    try:
        if any(name in names for names in pipe.get_list_adapters().values()):
            pipe.delete_adapters(name)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass


def install_pipeline_methods() -> None:
    """Attach ``load_moslora_weights`` to diffusers' SD and SDXL LoRA loader mixins (idempotent).

    Every pipeline that mixes these in (SD 1.x/2.x and SDXL text2img, img2img, inpaint, ...) then has
    ``pipe.load_moslora_weights(...)``.
    """
    from diffusers.loaders.lora_pipeline import (
        StableDiffusionLoraLoaderMixin,
        StableDiffusionXLLoraLoaderMixin,
    )

    for mixin in (StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin):
        if getattr(mixin, "load_moslora_weights", None) is not load_moslora_weights:
            mixin.load_moslora_weights = load_moslora_weights
