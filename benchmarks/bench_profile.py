"""Where a training step's time goes, and how close it runs to the machine's matrix-multiply peak.

For each job (the toy model with the quick start's recipe; the SD 1.5 architecture with random weights at
256 px, batch 1, rank 4 on UNet attention), one process sets up a real run through `Trainer` (the training
script's code), warms up, then:

- times --steps steps under `torch.profiler` and splits them by the phases the step labels
  (`training.batches.PHASES`: data, UNet forward, loss, backward, optimizer, checks); the rest is Python
  and bookkeeping between them;
- counts the step's floating-point operations with `torch.utils.flop_counter.FlopCounterMode` (forward and
  backward) and divides by the unprofiled step time: the achieved FLOP/s;
- measures the fp32 GEMM peak in the same process and thread count (square matmuls, best of several) and
  reports the *utilisation* = achieved / peak.

    python benchmarks/bench_profile.py                 # both jobs, appends to docs/benchmarks.md
    python benchmarks/bench_profile.py --jobs toy --steps 10 --no-docs
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


def gemm_peak(size: int = 1536, rounds: int = 5) -> float:
    """Best fp32 GEMM throughput (FLOP/s) of square `size` matmuls at the current thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def make_trainer(job: str, work: Path, extra: tuple[str, ...] = ()) -> Any:
    """A real run set up and resumed (caches on), ready to step; ``extra``: more training flags."""
    from moslora_diffusion.training import parse_args, validate_config
    from moslora_diffusion.training.loop import Trainer
    from moslora_diffusion.training.run_setup import make_accelerator

    common = ["--output_dir", str(work / f"out-{job}"), "--checkpointing_steps", "0", "--seed", "0",
              "--max_train_steps", "1000", "--no-signals", *extra]  # fmt: skip
    if job == "toy":
        from moslora_diffusion.toyworld.defaults import training_defaults

        argv = [*common, "--validation_prompt", ""]
        cfg = parse_args(argv, defaults=training_defaults(argv))
    elif job == "tiny":
        from bench_training import INSTANCE_PROMPT, make_instance_images

        from moslora_diffusion.tiny import save_tiny_pipeline

        model_dir = save_tiny_pipeline("sd1", work / "tiny-sd1")
        images = make_instance_images(work / "images-32", 32)
        cfg = parse_args([*common, "--pretrained_model_name_or_path", str(model_dir), "--instance_data_dir",
                          str(images), "--instance_prompt", INSTANCE_PROMPT, "--resolution", "32"])  # fmt: skip
    else:
        from bench_training import INSTANCE_PROMPT, Model, build_model_dir, make_instance_images

        model_dir = work / "sd1-256"
        build_model_dir(Model("sd1", 256), False, "float32", str(model_dir))
        images = make_instance_images(work / "images", 256)
        cfg = parse_args([*common, "--pretrained_model_name_or_path", str(model_dir), "--instance_data_dir",
                          str(images), "--instance_prompt", INSTANCE_PROMPT, "--resolution", "256", "--rank", "4"])  # fmt: skip
    validate_config(cfg)
    trainer = Trainer.setup(cfg, make_accelerator(cfg), None)
    trainer.resume()
    for m in trainer.wrapped.values():
        m.train()
    return trainer


def profile_job(job: str, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from moslora_diffusion.training.batches import PHASES

    trainer = make_trainer(job, work)
    for _ in range(warmup):
        trainer.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    with FlopCounterMode(display=False) as counter:
        trainer.step()
    flops = counter.get_total_flops()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        profiled_s = (time.perf_counter() - t0) / steps
    averages = prof.key_averages()
    totals = {e.key: e.cpu_time_total / 1e6 / steps for e in averages if e.key in PHASES}
    ops = sorted((e for e in averages if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                 reverse=True)[:8]  # fmt: skip
    top = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in ops]
    peak = gemm_peak()
    return {
        "job": job,
        "threads": torch.get_num_threads(),
        "step_s": step_s,
        "profiled_s": profiled_s,
        "phases": {p: totals.get(p, 0.0) for p in PHASES},
        "flops": flops,
        "achieved": flops / step_s,
        "peak": peak,
        "top_ops": top,
        "batch": trainer.cfg.train_batch_size,
        "resolution": trainer.run.resolution,
    }


LABELS = {"toy": "toy model, 32 px, quick-start recipe (rank 8, UNet + text encoder, batch 6)",
          "sd1": "SD 1.5 architecture, 256 px, batch 1, rank 4, UNet attention",
          "tiny": "the tests' tiny SD1 pipeline, 32 px, batch 1, rank 4, UNet attention"}  # fmt: skip


def tables(results: list[dict[str, Any]]) -> str:
    from moslora_diffusion.training.batches import PHASES

    rows = []
    for r in results:
        share = {p: 100 * v / r["profiled_s"] for p, v in r["phases"].items()}
        other = 100 - sum(share.values())
        rows.append([LABELS[r["job"]], f"{1000 * r['step_s']:.1f}", *[f"{share[p]:.1f}" for p in PHASES],
                     f"{other:.1f}", f"{r['flops'] / 1e9:.2f}", f"{r['achieved'] / 1e9:.1f}",
                     f"{r['peak'] / 1e9:.1f}", f"{100 * r['achieved'] / r['peak']:.0f} %"])  # fmt: skip
    headers = ["job", "ms/step", *[f"{p.removeprefix('step: ')} %" for p in PHASES], "other (Python) %",
               "GFLOP/step", "achieved GFLOP/s", "GEMM peak GFLOP/s", "utilisation"]  # fmt: skip
    ops = [[LABELS[r["job"]], ", ".join(f"`{k.removeprefix('aten::')}` {100 * v / r['profiled_s']:.0f} %"
                                        for k, v in r["top_ops"])] for r in results]  # fmt: skip
    return (
        markdown_table(headers, rows)
        + "\n\nThe operators taking the most time (self time, share of the step):\n\n"
        + (markdown_table(["job", "operators"], ops))
    )


def main() -> None:
    from moslora_diffusion.quiet import quiet_entry_point

    quiet_entry_point()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", default=["toy", "sd1"], choices=list(LABELS))  # tiny: on request
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        for job in args.jobs:
            results.append(profile_job(job, args.steps if job != "sd1" else max(2, args.steps // 2), args.warmup,
                                       Path(tmp)))  # fmt: skip
            print(tables(results[-1:]))
    text = tables(results)
    print(text)
    if args.docs:
        body = (f"One training step through `Trainer.step` (real run setup, caches on), {torch.get_num_threads()} "
                "torch threads. Phase shares are of the profiled step (the profiler adds its own cost: compare "
                "`ms/step`, unprofiled, with the sum); FLOPs counted by `FlopCounterMode` over forward and "
                "backward; the GEMM peak is square fp32 matmuls in the same process.\n\n" + text + "\n")  # fmt: skip
        append_section("Where a training step's time goes (profile and utilisation)", body)


if __name__ == "__main__":
    main()
