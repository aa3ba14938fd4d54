"""moslora-diffusion: MoSLoRA adapters for Stable Diffusion."""

__version__ = "0.1.0"
