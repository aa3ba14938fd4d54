"""The real SD 1.5, SD 2.1 and SDXL architectures (random weights) through the training script's code, on CPU.

Proves that full-size models train end to end here and records what they cost: seconds per step (wall and
CPU seconds of the training process) and peak RSS per configuration, with and without
`--gradient_checkpointing` and text-encoder training. Nothing is downloaded: each architecture is built
from `moslora_diffusion.architectures` with random weights, saved as a diffusers folder (SD 1.5 / 2.1 in
fp32, SDXL in bf16), and trained by one `run_training(cfg)` call per configuration in its own forked
process (see `bench_training.py`, whose helpers this reuses).

    python benchmarks/bench_full_size.py                      # everything below, appends to docs/benchmarks.md
    python benchmarks/bench_full_size.py --archs sd1 --steps 1 --no-docs

Default configurations (all at 512 px, batch 1, MoSLoRA rank 4 on UNet attention, 4 square images):

    sd1   fp32   {no GC, GC} x {UNet only, UNet + text encoder}
    sd2   fp32   the same (v-prediction scheduler, OpenCLIP-H-sized text encoder)
    sdxl  bf16   GC x {UNet only, UNet + both text encoders}, and no GC with UNet only

A configuration that the machine cannot run (out of memory, killed) is reported as failed with its exit
code instead of ending the benchmark.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402
from bench_training import INSTANCE_PROMPT, Model, build_model_dir, make_instance_images, run_forked  # noqa: E402

PRECISION = {"sd1": "no", "sd2": "no", "sdxl": "bf16"}
SAVE_DTYPE = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Setup:
    gradient_checkpointing: bool
    train_text_encoder: bool

    @property
    def label(self) -> str:
        return f"{'GC' if self.gradient_checkpointing else 'no GC'}, {'UNet+TE' if self.train_text_encoder else 'UNet'}"


def setups_for(arch: str) -> list[Setup]:
    if arch == "sdxl":
        return [Setup(True, False), Setup(True, True), Setup(False, False)]
    return [Setup(g, t) for g in (False, True) for t in (False, True)]


@dataclass
class Row:
    arch: str
    resolution: int
    precision: str
    setup: Setup
    walls: list[float]
    cpus: list[float]
    rss_mib: float
    run_s: float
    failure: str | None = None


def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One `run_training` call with the training script's flags; the step intervals after the first step."""
    import torch

    from moslora_diffusion.training import TrainEvent, parse_args, run_training

    torch.set_num_threads(spec["threads"])
    stamps: list[tuple[float, float]] = []

    def on_event(event: TrainEvent) -> None:
        if event.kind == "step":
            stamps.append((time.perf_counter(), time.process_time()))

    argv = [
        "--pretrained_model_name_or_path", spec["model_dir"],
        "--instance_data_dir", spec["images"],
        "--instance_prompt", INSTANCE_PROMPT,
        "--output_dir", spec["output_dir"],
        "--resolution", str(spec["resolution"]),
        "--rank", "4",
        "--train_batch_size", "1",
        "--max_train_steps", str(1 + spec["steps"]),
        "--checkpointing_steps", "0",
        "--mixed_precision", spec["precision"],
        "--seed", "0",
    ]  # fmt: skip
    if spec["gradient_checkpointing"]:
        argv.append("--gradient_checkpointing")
    if spec["train_text_encoder"]:
        argv.append("--train_text_encoder")
    started = time.perf_counter()
    result = run_training(parse_args(argv), callback=on_event)
    if result.steps_done != 1 + spec["steps"]:
        raise RuntimeError(f"expected {1 + spec['steps']} steps, got {result.steps_done}")
    walls = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpus = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return {"walls": walls, "cpus": cpus, "run_s": time.perf_counter() - started}


def table(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if r.failure:
            out.append(
                [f"{r.arch} {r.resolution} px", r.precision, r.setup.label, "failed", "", "", r.failure]
            )
            continue
        out.append(
            [
                f"{r.arch} {r.resolution} px",
                r.precision,
                r.setup.label,
                f"{statistics.median(r.walls):.1f}",
                f"{statistics.median(r.cpus):.1f}",
                f"{r.rss_mib / 1024:.1f}",
                f"run {r.run_s:.0f} s",
            ]
        )
    return markdown_table(
        ["model", "precision", "configuration", "s/step", "CPU s/step", "peak RSS GiB", "note"], out
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="sd1,sd2,sdxl", help="comma-separated: sd1, sd2, sdxl")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the (untimed) first one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (1: CPU s = work)")
    ap.add_argument("--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if not archs or set(archs) - set(PRECISION) or args.steps < 1:
        ap.error("--archs: choose from sd1, sd2, sdxl; --steps must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench_training import preload

    preload()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-full-size-"))
    rows: list[Row] = []
    try:
        images = make_instance_images(tmp / "images", args.resolution)
        for arch in archs:
            precision = PRECISION[arch]
            model_dir = tmp / arch
            t0 = time.perf_counter()
            _, build_rss = run_forked(
                build_model_dir, Model(arch, args.resolution), False, SAVE_DTYPE[precision], str(model_dir)
            )
            print(f"built {arch} ({SAVE_DTYPE[precision]}) in {time.perf_counter() - t0:.0f} s, "
                  f"peak RSS {build_rss / 1024:.1f} GiB", flush=True)  # fmt: skip
            for setup in setups_for(arch):
                spec = dict(
                    model_dir=str(model_dir),
                    images=str(images),
                    output_dir=str(tmp / f"out-{arch}"),
                    resolution=args.resolution,
                    precision=precision,
                    steps=args.steps,
                    threads=args.threads,
                    gradient_checkpointing=setup.gradient_checkpointing,
                    train_text_encoder=setup.train_text_encoder,
                )
                try:
                    out, rss = run_forked(train_child, spec)
                    row = Row(
                        arch, args.resolution, precision, setup, out["walls"], out["cpus"], rss, out["run_s"]
                    )
                except RuntimeError as exc:  # killed (out of memory) or failed: report, go on
                    row = Row(arch, args.resolution, precision, setup, [], [], 0.0, 0.0, failure=str(exc))
                shutil.rmtree(spec["output_dir"], ignore_errors=True)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
            shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = table(rows)
    print(body)
    if not args.no_docs:
        import torch

        torch.set_num_threads(args.threads)
        text = (
            "The real architectures with random weights, trained through `run_training` (the training script's "
            f"code) on CPU: {args.resolution} px, batch 1, MoSLoRA rank 4 on UNet attention (and on the text "
            "encoders' attention with `--train_text_encoder`), 4 square images, adapters in fp32, frozen base "
            "model in the listed precision (`--mixed_precision`), "
            f"{args.threads} torch thread(s); median of {args.steps} step(s) after the untimed first step. "
            "With text-encoder training the prompt cache is off, so the text encoders run every step. "
            "Peak RSS includes loading the model. GC = `--gradient_checkpointing`. The machine is shared: "
            "CPU s/step measures the work, wall s/step also other processes' load.\n\n" + body + "\n"
        )
        append_section("Full-size architectures on CPU (SD 1.5, SD 2.1, SDXL)", text, device="cpu")


if __name__ == "__main__":
    main()
