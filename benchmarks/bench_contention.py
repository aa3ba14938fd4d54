"""Training step time alone and with a second training beside it, under three OpenMP waiting settings.

Each run is a toy-world DreamBooth training (80 steps, rank 8, no validation) in a fresh process with the
default thread count; "two at once" starts two such processes together. Settings: libgomp's default (300,000
spins before a waiting thread sleeps), a short spin (``GOMP_SPINCOUNT=10000``) and ``OMP_WAIT_POLICY=PASSIVE``. The table shows the median step time (steps 10 on) of each process: two processes' threads spinning for the
same cores fall into a slow lockstep in some runs and not in others, so the spread matters.

    python benchmarks/bench_contention.py              # 2 rounds alone (alternating), 2 rounds two at once
    python benchmarks/bench_contention.py --no-docs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "libgomp's default (nothing set)": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
_CHILD = """
import sys, time
from moslora_diffusion import toyworld
from moslora_diffusion.training import parse_args, run_training
args = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()), "--instance_data_dir",
        str(toyworld.subject_path()), "--instance_prompt", "a sks circle", "--max_train_steps", "80", "--seed", "0",
        "--checkpointing_steps", "0", "--rank", "8", "--output_dir", sys.argv[1], "--overwrite_output_dir",
        "--validation_prompt", ""]
stamps = []
run_training(parse_args(args), callback=lambda e: stamps.append(time.perf_counter()) if e.kind == "step" else None)
gaps = sorted(b - a for a, b in zip(stamps[10:], stamps[11:]))
print(gaps[len(gaps) // 2])
"""


def _start(extra: dict[str, str], out: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.Popen([sys.executable, "-c", _CHILD, out], env={**env, **extra}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def _median_step(procs: list[subprocess.Popen]) -> list[float]:
    out = []
    for proc in procs:
        text, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a training run failed (exit {proc.returncode})")
        out.append(float(text.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating settings")
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    alone: dict[str, list[float]] = {name: [] for name in SETTINGS}
    together: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name in list(SETTINGS)[:: 1 if i % 2 == 0 else -1]:
                alone[name] += _median_step([_start(SETTINGS[name], f"{tmp}/a")])
        for i in range(args.rounds):
            for name in list(SETTINGS)[:: 1 if i % 2 == 0 else -1]:
                together[name] += _median_step([_start(SETTINGS[name], f"{tmp}/b{k}") for k in range(2)])
    rows = []
    for name in SETTINGS:
        quiet, busy = min(alone[name]), together[name]
        spread = f"{1000 * min(busy):.0f}–{1000 * max(busy):.0f}"
        rows.append([name, f"{1000 * quiet:.0f}", spread, f"{min(busy) / quiet:.1f}–{max(busy) / quiet:.1f}"])
    table = markdown_table(
        ["OpenMP waiting", "alone, ms/step", "two at once, ms/step (each process)", "slowdown"], rows
    )
    print(table)
    if not args.no_docs:
        body = (f"Toy-world training, 80 steps, rank 8, default thread count ({os.cpu_count()} cores); "
                f"alone: best of {args.rounds} alternating runs; two at once: every process of {args.rounds} "
                f"rounds (min–max; the slowdown is against the setting's own time alone).\n\n{table}")  # fmt: skip
        append_section("Two trainings at once: OpenMP waiting", body)


if __name__ == "__main__":
    main()
