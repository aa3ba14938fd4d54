"""Training step time alone and with a second training beside it, under OpenMP's waiting settings.

Each run is a DreamBooth training in a fresh process with the default thread count (all cores): the toy
world (rank 8, no validation) or the SD 1.5 architecture (random weights, 256 px, rank 4, caches on).
"Two at once" starts two such processes together. Settings: libgomp's default (300,000 spins before a
waiting thread sleeps), shorter spins (``GOMP_SPINCOUNT``; the entry points set 2,000 where the user chose
nothing: :func:`moslora_diffusion.process_env.prepare_entry_point`) and ``OMP_WAIT_POLICY=PASSIVE``.
The table shows each process's median step time (the first steps left out): alone, the best and the median
of the alternating rounds; two at once, every process of every round (min–max); the ratios are against the
first setting's time alone (libgomp's default by default: what a user had before).

    python benchmarks/bench_contention.py --settings default entry spin1000 passive   # toy and SD 1.5, 2 rounds
    python benchmarks/bench_contention.py --jobs toy --rounds 3 --no-docs
    python benchmarks/bench_contention.py --settings default entry --alone-rounds 6 --rounds 0   # cost alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

from moslora_diffusion.process_env import OPENMP_SPIN, OPENMP_WAIT_VARIABLES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# key: (label, environment); the first is the reference of both ratios.
SETTINGS = {
    "default": ("libgomp's default (nothing set)", {}),
    "spin3000": ("GOMP_SPINCOUNT=3000", {"GOMP_SPINCOUNT": "3000"}),
    "entry": (f"{'='.join(OPENMP_SPIN)} (entry points' default)", dict([OPENMP_SPIN])),
    "spin1000": ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
    "passive": ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
}
# key: (description, steps, first steps left out of the median)
JOBS = {
    "toy": ("toy world, 32 px, rank 8", 50, 10),
    "sd1": ("SD 1.5 architecture, 256 px, rank 4", 7, 2),
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


def measure(job: str, settings: list[str], alone_rounds: int, rounds: int, tmp: str) -> list[list[str]]:
    """Rows of the table for one job: alone (alternating settings), then two at once."""
    data = _prepare_sd1(tmp) if job == "sd1" else []
    alone: dict[str, list[float]] = {key: [] for key in settings}
    together: dict[str, list[float]] = {key: [] for key in settings}
    for i in range(alone_rounds):
        for key in settings[:: 1 if i % 2 == 0 else -1]:
            alone[key] += _median_step([_start(job, SETTINGS[key][1], f"{tmp}/a", data)])
            print(job, key, "alone", alone[key][-1], flush=True)
    for i in range(rounds):
        for key in settings[:: 1 if i % 2 == 0 else -1]:
            together[key] += _median_step(
                [_start(job, SETTINGS[key][1], f"{tmp}/b{k}", data) for k in range(2)]
            )
            print(job, key, "two at once", together[key][-2:], flush=True)
    reference = alone[settings[0]]
    rows = []
    for key in settings:
        quiet, busy = alone[key], together[key]
        low_high = (min(busy), max(busy)) if busy else ()
        spread = "–".join(dict.fromkeys(f"{1000 * t:.0f}" for t in low_high)) or "—"
        ratio = "–".join(dict.fromkeys(f"{t / min(reference):.1f}" for t in low_high)) or "—"
        cost = f"{min(quiet) / min(reference):.2f} ({statistics.median(quiet) / statistics.median(reference):.2f})"
        description, steps, _ = JOBS[job]
        rows.append([f"{description}, {steps} steps", SETTINGS[key][0], f"{1000 * min(quiet):.0f}",
                     f"{1000 * statistics.median(quiet):.0f}", cost, spread, ratio])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="the first is the reference of the ratios")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating settings")
    parser.add_argument("--alone-rounds", type=int, help="rounds alone (default: --rounds); "
                        "with --rounds 0 only the cost alone is measured")  # fmt: skip
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    alone_rounds = args.rounds if args.alone_rounds is None else args.alone_rounds
    if alone_rounds < 1:
        parser.error("at least one round alone: the ratios need the time alone")
    rows = []
    for job in args.jobs:
        with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
            rows += measure(job, args.settings, alone_rounds, args.rounds, tmp)
    headers = ["job", "OpenMP waiting", "alone, ms/step (best)", "alone, ms/step (median)",
               "alone / reference: best (median)", "two at once, ms/step (each process)",
               "two at once / reference's best alone"]  # fmt: skip
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_docs:
        body = (f"DreamBooth training, default thread count ({os.cpu_count()} cores), each run a fresh process; "
                f"alone: best and median of {alone_rounds} alternating runs; two at once: every process of "
                f"{args.rounds} rounds (min–max). Both ratios are against the best time alone of "
                f"{SETTINGS[args.settings[0]][0]}: the step a user had on a quiet machine before.\n\n{table}")  # fmt: skip
        append_section("Two trainings at once: OpenMP waiting", body)


if __name__ == "__main__":
    main()
