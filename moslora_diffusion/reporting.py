"""Benchmark reports: machine description, markdown tables, and dated sections in docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_description(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        hw = torch.cuda.get_device_name(0)
    else:
        hw = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}; Python {platform.python_version()}"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_section(
    title: str, body: str, device: str = "cpu", docs: Path = DOCS, command: str | None = None
) -> None:
    """Append a dated section with the exact command and machine to docs/benchmarks.md."""
    if command is None:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title}\n\n- Command: `{command}`\n- Machine: {machine_description(device)}\n- Date: {date}\n\n{body}\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    if not docs.exists():
        docs.write_text(
            "# Benchmarks\n\nEach section is appended by a script under `benchmarks/`; newest last.\n"
        )
    with docs.open("a") as f:
        f.write(text)
    print(f"appended to {docs}")
