"""Shared helpers for benchmark scripts: their tables go to the repository's docs/benchmarks.md."""

from pathlib import Path
from typing import Any

from moslora_diffusion import reporting
from moslora_diffusion.reporting import machine_description, markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

__all__ = ["DOCS", "append_section", "machine_description", "markdown_table"]


def append_section(title: str, body: str, **kwargs: Any) -> None:
    """:func:`moslora_diffusion.reporting.append_section` into docs/benchmarks.md."""
    reporting.append_section(title, body, DOCS, **kwargs)
