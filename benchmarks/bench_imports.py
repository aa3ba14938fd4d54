"""What a command costs before it does anything: `moslora-diffusion --help` and `inspect FILE` vs `import torch`.

Each command runs as a fresh process, interleaved round-robin (so machine noise hits all alike), and the
median wall time per command is reported with its ratio to `python -c "import torch"`. The goal is that
both commands stay within 1.5x of importing torch, i.e. that the toolkit imports only what a command uses.

    python benchmarks/bench_imports.py             # 7 rounds, appends the table to docs/benchmarks.md
    python benchmarks/bench_imports.py --rounds 3 --no-docs
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402


def write_sample_adapter(folder: Path) -> Path:
    """A small native MoSLoRA file (one UNet module) to inspect."""
    import torch

    from moslora_diffusion.formats import ComponentConfig, MoSLoraFile

    state = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 320),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_mixer.weight": torch.randn(4, 4),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(320, 4),
    }
    config = {"unet": ComponentConfig(r=4, lora_alpha=4, target_modules=["to_q"])}
    return MoSLoraFile.from_state_dicts({"unet": state}, config, base_model={"architecture": "sd1"}).save(
        folder / "sample.safetensors"
    )


def commands(sample: Path) -> dict[str, list[str]]:
    cli = shutil.which("moslora-diffusion")
    prefix = [cli] if cli else [sys.executable, "-m", "moslora_diffusion.cli"]
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "moslora-diffusion --help": [*prefix, "--help"],
        "moslora-diffusion inspect FILE": [*prefix, "inspect", str(sample)],
    }


def measure(cmds: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for cmd in cmds.values():  # warm the file cache once
        subprocess.run(cmd, check=True, capture_output=True)
    for _ in range(rounds):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed runs per command (interleaved)")
    ap.add_argument("--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        times = measure(commands(write_sample_adapter(Path(tmp))), args.rounds)
    ref = statistics.median(times['python -c "import torch"'])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        ratio = med / ref
        goal = "" if name.startswith("python") else ("yes" if ratio <= 1.5 else "no")
        rows.append([f"`{name}`", f"{med:.2f}", f"{min(values):.2f}-{max(values):.2f}", f"{ratio:.2f}", goal])
    table = markdown_table(["command", "median s", "min-max s", "ratio to import torch", "within 1.5x"], rows)
    body = (
        f"Each command in a fresh process, {args.rounds} interleaved rounds after one warm-up round; wall time.\n\n"
        + table
    )
    print(body)
    if not args.no_docs:
        append_section("Start-up cost of the command line", body)


if __name__ == "__main__":
    main()
