"""Training step time alone and with a second training beside it, under OpenMP's waiting settings.

Each run is a DreamBooth training in a fresh process with the default thread count (all cores): the toy
world (rank 8, no validation) or the SD 1.5 architecture (random weights, 256 px, rank 4, caches on).
"Two at once" starts two such processes together. Settings: libgomp's default (300,000 spins before a
waiting thread sleeps), shorter spins (``GOMP_SPINCOUNT``; the entry points set 1,000 where the user chose
nothing: :func:`moslora_diffusion.process_env.prepare_entry_point`) and ``OMP_WAIT_POLICY=PASSIVE``.
The table shows each process's median step time (the first steps left out): alone, the best of the
alternating rounds; two at once, every process of every round (min–max), and both against the default's
time alone, which is what a user had before.

    python benchmarks/bench_contention.py                      # toy and SD 1.5 architecture, 2 rounds
    python benchmarks/bench_contention.py --jobs toy --rounds 3 --no-docs
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

from moslora_diffusion.process_env import OPENMP_SPIN, OPENMP_WAIT_VARIABLES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "libgomp's default (nothing set)": {},
    "GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"},
    f"{'='.join(OPENMP_SPIN)} (entry points' default)": dict([OPENMP_SPIN]),
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
JOBS = {
    "toy": ("toy world, 32 px, rank 8, 50 steps", 50, 10),
    "sd1": ("SD 1.5 architecture, 256 px, rank 4, 7 steps", 7, 2),
}
# The child trains and prints its median step time; argv: output folder, job, steps, steps left out,
# [model folder, image folder].
_CHILD = """
import sys, time
from moslora_diffusion import toyworld
from moslora_diffusion.training import parse_args, run_training
out, job, steps, skip = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
common = ["--max_train_steps", steps, "--seed", "0", "--checkpointing_steps", "0", "--output_dir", out,
          "--overwrite_output_dir", "--validation_prompt", ""]
if job == "toy":
    args = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()), "--instance_data_dir",
            str(toyworld.subject_path()), "--instance_prompt", "a sks circle", "--rank", "8"]
else:
    args = ["--pretrained_model_name_or_path", sys.argv[5], "--instance_data_dir", sys.argv[6],
            "--instance_prompt", "a sks thing", "--resolution", "256", "--rank", "4", "--no-signals"]
stamps = []
run_training(parse_args(args + common),
             callback=lambda e: stamps.append(time.perf_counter()) if e.kind == "step" else None)
gaps = sorted(b - a for a, b in zip(stamps[skip:], stamps[skip + 1:]))
print(gaps[len(gaps) // 2])
"""


def _start(job: str, extra: dict[str, str], out: str, data: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
    _, steps, skip = JOBS[job]
    cmd = [sys.executable, "-c", _CHILD, out, job, str(steps), str(skip), *data]
    return subprocess.Popen(cmd, env={**env, **extra}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def _median_step(procs: list[subprocess.Popen]) -> list[float]:
    out = []
    for proc in procs:
        text, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a training run failed (exit {proc.returncode})")
        out.append(float(text.strip().splitlines()[-1]))
    return out


def _prepare_sd1(tmp: str) -> list[str]:
    from bench_training import Model, build_model_dir, make_instance_images

    build_model_dir(Model("sd1", 256), False, "float32", f"{tmp}/sd1")
    make_instance_images(Path(tmp) / "images", 256)
    return [f"{tmp}/sd1", f"{tmp}/images"]


def measure(job: str, rounds: int, tmp: str) -> list[list[str]]:
    """Rows of the table for one job: alone (alternating settings), then two at once."""
    data = _prepare_sd1(tmp) if job == "sd1" else []
    alone: dict[str, list[float]] = {name: [] for name in SETTINGS}
    together: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for i in range(rounds):
        for name in list(SETTINGS)[:: 1 if i % 2 == 0 else -1]:
            alone[name] += _median_step([_start(job, SETTINGS[name], f"{tmp}/a", data)])
            print(job, name, "alone", alone[name][-1], flush=True)
    for i in range(rounds):
        for name in list(SETTINGS)[:: 1 if i % 2 == 0 else -1]:
            together[name] += _median_step(
                [_start(job, SETTINGS[name], f"{tmp}/b{k}", data) for k in range(2)]
            )
            print(job, name, "two at once", together[name][-2:], flush=True)
    default = min(alone[next(iter(SETTINGS))])
    rows = []
    for name in SETTINGS:
        quiet, busy = min(alone[name]), together[name]
        rows.append([JOBS[job][0], name, f"{1000 * quiet:.0f}", f"{quiet / default:.2f}",
                     f"{1000 * min(busy):.0f}–{1000 * max(busy):.0f}",
                     f"{min(busy) / default:.1f}–{max(busy) / default:.1f}"])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating settings")
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    rows = []
    for job in args.jobs:
        with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
            rows += measure(job, args.rounds, tmp)
    headers = ["job", "OpenMP waiting", "alone, ms/step", "alone / default alone",
               "two at once, ms/step (each process)", "two at once / default alone"]  # fmt: skip
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_docs:
        body = (f"DreamBooth training, default thread count ({os.cpu_count()} cores), each run a fresh process; "
                f"alone: best of {args.rounds} alternating runs; two at once: every process of {args.rounds} "
                "rounds (min–max). Both ratios are against libgomp's default alone: the step a user had on a "
                f"quiet machine before.\n\n{table}")  # fmt: skip
        append_section("Two trainings at once: OpenMP waiting", body)


if __name__ == "__main__":
    main()
