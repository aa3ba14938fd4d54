"""Names and choices shared by the library, the training script, the CLI and the web UI.

Importing this module costs nothing (no torch, no diffusers), so entry points can build their argument
parsers from it before any heavy import.
"""

from __future__ import annotations

# Base-model families, as recorded in a native file's ``base_model.architecture``.
ARCHITECTURES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Pipeline components an adapter can live in, and the text encoders among them.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
COMPONENTS = ("unet", *TEXT_ENCODERS)

# Initialisations of the r x r mixer: Kaiming-uniform (a = sqrt(5), the MoSLoRA reference code's) or orthogonal.
MIXER_INITS = ("kaiming", "orthogonal")
# The default for new adapters: orthogonal, because the toy-world yardstick measured it learning as fast as LoRA
# while Kaiming learns slower (star, 20 seeds: +13.6 ± 6.4 points over kaiming; docs/quality.md).
DEFAULT_MIXER_INIT = "orthogonal"
# What a native file without a ``mixer_init`` entry used: files were written with the field since version 1,
# and the default was Kaiming until 2026-12-04.
LEGACY_MIXER_INIT = "kaiming"

# Kinds of adapter file the toolkit reads.

# Adapter types the training script and the web UI train: MoSLoRA (with mixer) or plain PEFT LoRA.
ADAPTER_TYPES = ("moslora", "lora")

# Default file names.
MOSLORA_WEIGHTS_NAME = "moslora_weights.safetensors"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "lora_kohya.safetensors"
