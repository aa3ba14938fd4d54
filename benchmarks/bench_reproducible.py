"""What MKL's reproducible mode costs: GEMM throughput and a toy-world training run, with and without it.

Each measurement runs in a fresh process. "AUTO" is what every entry point of the package does (the mode is
set at import); "OFF" multiplies one matrix before importing the package with ``MKL_CBWR`` unset, so MKL
starts without a reproducible mode (what torch does on its own). Rounds alternate the two (ABBA) to share the
machine's noise; the table shows the fastest round of each and the ratio OFF/AUTO (above 1: AUTO faster).

    python benchmarks/bench_reproducible.py                 # GEMMs + 60 toy training steps, 3 rounds
    python benchmarks/bench_reproducible.py --rounds 1 --steps 5 --no-docs   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (rows, inner, cols): token x channel products of the SD 1.5 UNet at 256 px and of the toy model.
GEMMS = [
    (1024, 320, 320),
    (256, 640, 640),
    (64, 1280, 1280),
    (1024, 320, 2560),
    (77, 768, 320),
    (256, 32, 96),
]
MODES = {"AUTO": "", "OFF": "import torch\n_ = torch.ones(8, 8) @ torch.ones(8, 8)\n"}

_CHILD = """
import json, sys, time
{prelude}
import torch
import moslora_diffusion
from moslora_diffusion import reproducible
torch.set_num_threads({threads})
out = {{"mode": reproducible.mkl_mode(), "gemm": {{}}}}
for m, k, n in {gemms!r}:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps = max(3, int(2e10 / (2 * m * k * n)))
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    out["gemm"][f"{{m}}x{{k}}x{{n}}"] = 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9
if {steps}:
    from moslora_diffusion import toyworld
    from moslora_diffusion.training import parse_args, run_training
    args = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()), "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--max_train_steps", "{steps}", "--seed", "0", "--checkpointing_steps", "0", "--rank", "8",
            "--output_dir", sys.argv[1], "--overwrite_output_dir"]
    t = time.perf_counter()
    run_training(parse_args(args))
    out["train_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def _measure(mode: str, threads: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = _CHILD.format(prelude=MODES[mode], threads=threads, gemms=GEMMS, steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code, tmp], capture_output=True, text=True, env=env, cwd=ROOT
        )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["mode"] not in (mode, None):
        raise SystemExit(f"asked for MKL mode {mode}, the child ran {result['mode']}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="toy training steps per run (0: GEMMs only)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md"
    )
    args = parser.parse_args(argv)

    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for i in range(args.rounds):
        for mode in list(MODES)[:: 1 if i % 2 == 0 else -1]:  # ABBA: drift in the machine cancels out
            runs[mode].append(_measure(mode, args.threads, args.steps))
    rows = []
    for shape in runs["AUTO"][0]["gemm"]:
        best = {mode: max(r["gemm"][shape] for r in runs[mode]) for mode in MODES}
        rows.append([f"GEMM {shape} (GFLOP/s)", f"{best['AUTO']:.1f}", f"{best['OFF']:.1f}",
                     f"{best['AUTO'] / best['OFF']:.3f}"])  # fmt: skip
    if args.steps:
        best = {mode: min(r["train_s"] for r in runs[mode]) for mode in MODES}
        rows.append([f"toy training, {args.steps} steps, whole run (s)", f"{best['AUTO']:.1f}",
                     f"{best['OFF']:.1f}", f"{best['OFF'] / best['AUTO']:.3f}"])  # fmt: skip
    table = markdown_table(
        ["measure", "MKL_CBWR=AUTO (ours)", "no mode (OFF)", "speed AUTO vs OFF (>1: AUTO faster)"], rows
    )
    print(table)
    if not args.no_docs:
        body = (f"{args.rounds} alternating rounds, best of each, {args.threads} torch threads; the ratio is "
                f"throughput AUTO/OFF for a GEMM, time OFF/AUTO for training.\n\n{table}")  # fmt: skip
        append_section("Cost of the reproducible MKL mode", body)


if __name__ == "__main__":
    main()
