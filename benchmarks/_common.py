"""Shared helpers for benchmark scripts (they live in the library: moslora_diffusion.reporting)."""

from moslora_diffusion.reporting import DOCS, append_section, machine_description, markdown_table

__all__ = ["DOCS", "append_section", "machine_description", "markdown_table"]
