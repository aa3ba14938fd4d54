"""MoSLoRA file formats: the native v1 file, exact diffusers / kohya exports, and key spellings."""

from .export import (
    DIFFUSERS_WEIGHTS_NAME,
    EXPORT_FORMATS,
    KOHYA_WEIGHTS_NAME,
    detect_architecture,
    export_adapter,
    folded_modules,
    to_diffusers_state_dict,
    to_kohya_state_dict,
)
from .naming import diffusers_to_sgm_unet_path, kohya_module_name, path_variants, strip_text_model
from .native import (
    ARCHITECTURES,
    FORMAT_TAG,
    FORMAT_VERSION,
    MOSLORA_WEIGHTS_NAME,
    AdapterModule,
    ComponentConfig,
    MoSLoraFile,
    is_moslora_metadata,
    load_moslora_file,
    resolve_weights_path,
    save_moslora_file,
    split_key,
)
from .safetensors_io import read_header, read_safetensors, write_safetensors_atomic

__all__ = [
    "ARCHITECTURES",
    "DIFFUSERS_WEIGHTS_NAME",
    "EXPORT_FORMATS",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "KOHYA_WEIGHTS_NAME",
    "MOSLORA_WEIGHTS_NAME",
    "AdapterModule",
    "ComponentConfig",
    "MoSLoraFile",
    "detect_architecture",
    "diffusers_to_sgm_unet_path",
    "export_adapter",
    "folded_modules",
    "is_moslora_metadata",
    "kohya_module_name",
    "load_moslora_file",
    "path_variants",
    "read_header",
    "read_safetensors",
    "resolve_weights_path",
    "save_moslora_file",
    "split_key",
    "strip_text_model",
    "to_diffusers_state_dict",
    "to_kohya_state_dict",
    "write_safetensors_atomic",
]
