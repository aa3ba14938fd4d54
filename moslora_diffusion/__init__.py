"""moslora-diffusion: MoSLoRA adapters for Stable Diffusion (SD 1.x/2.x, SDXL).

Importing the package adds `load_moslora_weights` to diffusers' Stable Diffusion pipelines.
"""

from .adapters import add_moslora_adapter, load_moslora_state_dict, moslora_state_dict
from .config import MoSLoraConfig
from .loading import install_pipeline_methods
from .targets import PRESET_NAMES, resolve_targets

__version__ = "0.1.0"

install_pipeline_methods()

__all__ = [
    "MoSLoraConfig",
    "PRESET_NAMES",
    "add_moslora_adapter",
    "load_moslora_state_dict",
    "moslora_state_dict",
    "resolve_targets",
]
