"""Reports: machine description, markdown tables, and dated sections appended to a markdown file."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path


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
    title: str, body: str, docs: Path, device: str = "cpu", command: str | None = None
) -> None:
    """Append a dated section with the exact command and machine to the markdown file ``docs``."""
    if command is None:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title}\n\n- Command: `{command}`\n- Machine: {machine_description(device)}\n- Date: {date}\n\n{body}\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    if not docs.exists():
        docs.write_text(
            f"# {docs.stem.replace('_', ' ').capitalize()}\n\nDated sections, appended by commands; newest last.\n"
        )
    with docs.open("a") as f:
        f.write(text)
    print(f"appended to {docs}")
