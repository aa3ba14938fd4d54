"""Does `--compile` (torch.compile of the UNet) pay for itself, and does it train the same adapter?

For each job (the toy model with the quick start's recipe; the SD 1.5 architecture with random weights at
256 px), fresh processes (eager; `torch.compile` with inductor; with `aot_eager`) each set up a real run and
step it: the first forward and backward (which compiles) and the median of the following steps are timed. The
first micro-batch's adapter gradients are compared with eager mode
(relative difference ‖g − g_eager‖ / ‖g_eager‖), for inductor and for `aot_eager` (the same captured graph
without inductor's code generation). The break-even run length is the compile cost divided by the time
saved per step.

    python benchmarks/bench_compile.py                    # both jobs, appends to docs/benchmarks.md
    python benchmarks/bench_compile.py --jobs toy --steps 20 --no-docs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402
from bench_profile import LABELS, make_trainer  # noqa: E402
from bench_training import run_forked  # noqa: E402


def child(job: str, backend: str | None, steps: int, work: str) -> dict[str, Any]:
    """One process: set up the job, compile the UNet with ``backend`` (None: eager), save the first micro-batch's
    adapter gradients, then time the steps."""
    import os

    import torch

    from moslora_diffusion.training.batches import micro_batch_loss

    # a cold compile, as on a user's first run: an inductor cache of its own (earlier runs' cache hides the cost)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(work) / f"inductor-cache-{job}-{backend}")
    trainer = make_trainer(job, Path(work) / f"run-{backend}")
    if backend is not None:
        trainer.run.comps.unet.compile(backend=backend)
    t0 = time.perf_counter()
    micro_batch_loss(trainer.run, 0).backward()  # the first forward and backward: compiles
    first = time.perf_counter() - t0
    grads = {f"{c}.{n}": p.grad.clone() for c, m in trainer.trained.items() for n, p in m.named_parameters()
             if p.grad is not None}  # fmt: skip
    trainer.optimizer.zero_grad(set_to_none=True)
    path = Path(work) / f"grads-{job}-{backend}.pt"
    torch.save(grads, path)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t0)
    return {"first": first, "step": statistics.median(times), "grads": str(path)}


def compare(a: str, b: str) -> float:
    """Relative difference of two sets of gradients: ‖a − b‖ / ‖a‖ over all adapter tensors."""
    import torch

    x, y = torch.load(a), torch.load(b)
    return float(sum((x[k] - y[k]).norm() ** 2 for k in x) ** 0.5 / sum(x[k].norm() ** 2 for k in x) ** 0.5)


def main() -> None:
    from moslora_diffusion.quiet import quiet_entry_point

    quiet_entry_point()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", default=["toy", "tiny", "sd1"], choices=list(LABELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        for job in args.jobs:
            steps = args.steps if job != "sd1" else max(3, args.steps // 10)
            plain, _ = run_forked(child, job, None, steps, tmp)
            reference, _ = run_forked(child, job, "aot_eager", 2, tmp)  # the same graph, without inductor
            comp, _ = run_forked(child, job, "inductor", steps, tmp)
            saved = plain["step"] - comp["step"]
            overhead = comp["first"] - plain["first"]
            even = f"{overhead / saved:.0f} steps" if saved > 0 else "never (no step is faster)"
            rows.append([LABELS[job], steps, f"{plain['first']:.2f}", f"{comp['first']:.2f}",
                         f"{1000 * plain['step']:.1f}", f"{1000 * comp['step']:.1f}",
                         f"{plain['step'] / comp['step']:.2f}×", even,
                         f"{compare(plain['grads'], reference['grads']):.1e}",
                         f"{compare(plain['grads'], comp['grads']):.1e}"])  # fmt: skip
            print(rows[-1])
    headers = ["job", "steps", "first step s (eager)", "first step s (compiled)", "ms/step eager",
               "ms/step compiled", "speed-up per step", "break-even", "gradients vs eager: aot_eager",
               "gradients vs eager: inductor"]  # fmt: skip
    text = markdown_table(headers, rows)
    print(text)
    if args.docs:
        body = (f"`--compile` against eager mode, each in a fresh process through `Trainer.step` (real run setup, "
                f"caches on), {torch.get_num_threads()} torch threads; the first step includes compiling (a cold compile: each process has an empty inductor cache).\n\n"
                f"{text}\n")  # fmt: skip
        append_section("torch.compile of the UNet (--compile)", body)


if __name__ == "__main__":
    main()
