"""DreamBooth training with MoSLoRA (or plain LoRA) adapters for SD 1.x/2.x and SDXL.

Used by `train_scripts/train_dreambooth_moslora.py` and by the web UI:

    cfg = parse_args(["--instance_data_dir", "dog", "--instance_prompt", "a photo of sks dog"])
    validate_config(cfg)                      # all input checks, no model loaded
    result = run_training(cfg, callback=print, should_stop=lambda: False)
"""

from ..errors import NonFiniteLossError, TrainConfigError
from .args import TrainConfig, build_parser, parse_args
from .events import TrainEvent, TrainResult
from .loop import run_training
from .preflight import validate_config

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainConfigError",
    "TrainEvent",
    "TrainResult",
    "build_parser",
    "parse_args",
    "run_training",
    "validate_config",
]
