"""The Gradio web UI: generate with MoSLoRA / LoRA adapters, compare strengths, train new adapters.

Importing this package is cheap; Gradio, torch and diffusers load when an app is built.
``main(argv)`` is the command line (``python app/app.py``, ``moslora-diffusion app``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def main(argv: Any = None) -> int:
    from .server import main as _main

    return _main(argv)
