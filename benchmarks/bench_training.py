"""DreamBooth training through `moslora_diffusion.training`: seconds per step and peak memory.

Compares `--adapter moslora` with `--adapter lora`, and the trainer's caches on and off, on the real
architectures with random weights (nothing is downloaded). Every configuration is one real
`run_training(cfg)` call in its own process; step times come from the `TrainEvent` that `run_training`
sends after each optimizer step.

Caches (see `moslora_diffusion/training/loop.py`, `_enable_caches`): VAE latents are cached when no random
augmentation is on (square images, no `--random_flip`), prompt embeddings when the text encoder is not
trained. Both fill on first use, so steps of the first epoch also encode; use `--warmup` of at least the
number of images (4) to time cached steps only. The three modes, all with square instance images:

    latents+text   no flags                                  both caches on
    text           --random_flip                             VAE encodes every step; prompts cached
    none+TE        --random_flip --train_text_encoder        nothing cached, and text-encoder adapters are
                                                             trained too (there is no flag that only turns
                                                             the prompt cache off)

    python benchmarks/bench_training.py                      # CPU: SD 1.5 architecture, 256 px, fp32
    python benchmarks/bench_training.py --device cuda        # SD 1.5 at 512 px and SDXL at 1024 px, bf16
    python benchmarks/bench_training.py --mixed_precision no,bf16 --modes latents+text --threads 2   # fp32 vs bf16
    python benchmarks/bench_training.py --tiny --steps 1 --warmup 0 --no-docs   # smoke test

Timing: the first step is never timed (no event marks its start); then `--warmup` steps are dropped and
the median of `--steps` step intervals is reported, in wall-clock seconds and in CPU seconds of the
training process. On a shared CPU read the CPU seconds: with one torch thread (the CPU default) they
measure the work per step, while the wall time follows everyone else's load. Peak memory: the child's
peak RSS (`os.wait4`), and on CUDA also `torch.cuda.max_memory_allocated`. The children are forked from this process after it has only
imported the libraries (no model, no tensor op, no CUDA call), so each starts with the same baseline as a
fresh interpreter that imported them, without paying the import time again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

ADAPTERS = ("lora", "moslora")
PRECISIONS = {
    "no": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
}  # --mixed_precision: the saved model's dtype
CACHE_MODES: dict[str, list[str]] = {
    "latents+text": [],
    "text": ["--random_flip"],
    "none+TE": ["--random_flip", "--train_text_encoder"],
}
INSTANCE_PROMPT = "a photo of sks toy"
N_IMAGES = 4


@dataclass(frozen=True)
class Model:
    arch: str  # "sd1" or "sdxl"
    resolution: int
    precision: str = "no"  # the trainer's --mixed_precision

    @property
    def label(self) -> str:
        return f"{self.arch} {self.resolution} px" + (f", {self.precision}" if self.precision != "no" else "")


@dataclass
class Result:
    model: Model
    mode: str
    adapter: str
    step_times: list[float]  # the measured intervals (after warm-up), wall clock
    cpu_times: list[float]  # the same intervals in CPU seconds of the process (all threads)
    rss_mib: float
    gpu_mib: float | None
    wall_s: float

    @property
    def median(self) -> float:
        return statistics.median(self.step_times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)


def models_for(device: str, tiny: bool) -> list[Model]:
    cuda = device.startswith("cuda")
    if tiny:
        return [Model("sd1", 32)] + ([Model("sdxl", 32)] if cuda else [])
    return [Model("sd1", 512), Model("sdxl", 1024)] if cuda else [Model("sd1", 256)]


# ----------------------------------------------------------------------------- running in a forked child


def run_forked(fn: Callable[..., dict[str, Any] | None], *args: Any) -> tuple[dict[str, Any], float]:
    """Run `fn(*args)` in a forked child; return (its JSON-able result, the child's peak RSS in MiB)."""
    fd, result_path = tempfile.mkstemp(suffix=".json", prefix="bench-training-")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            out = fn(*args) or {}
            Path(result_path).write_text(json.dumps(out))
        except BaseException:  # report anything, then leave without running the parent's cleanup
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        _, status, usage = os.wait4(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(
                f"{getattr(fn, '__name__', fn)}{args} failed in its process (exit code {code})"
            )
        result = json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)
    return result, usage.ru_maxrss / 1024  # Linux: KiB


def build_model_dir(model: Model, tiny: bool, save_dtype: str, path: str) -> None:
    """Save a pipeline of `model.arch` with random weights (real layout, or the tiny one) to `path`."""
    import torch

    if tiny:
        from moslora_diffusion.tiny import save_tiny_pipeline

        save_tiny_pipeline(model.arch, path)
        return
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from moslora_diffusion import architectures as A
    from moslora_diffusion.tiny import TINY_MAX_LENGTH, load_tokenizer, write_char_clip_tokenizer

    tokenizer = load_tokenizer(write_char_clip_tokenizer(Path(path).parent / f"tokenizer-{model.arch}"))
    # Token ids as the local tokenizer writes them; the vocabulary is the tokenizer's (not CLIP's 49,408).
    ids = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    text_config = A.OPENCLIP_H_TEXT if model.arch == "sd2" else A.CLIP_L_TEXT
    components: dict[str, Any] = dict(
        unet=A.build_unet(model.arch),
        vae=A.build_vae(model.arch),
        text_encoder=A.build_text_encoder({**text_config, **ids}),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction" if model.arch == "sd2" else "epsilon",  # SD 2.1 (768) is v-pred
        ),
    )
    if model.arch == "sdxl":
        components["text_encoder_2"] = A.build_text_encoder(
            {**A.OPENCLIP_BIGG_TEXT, **ids}, with_projection=True
        )
        components["tokenizer_2"] = tokenizer
        pipe = StableDiffusionXLPipeline(**components)
    else:
        pipe = StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.to(dtype=getattr(torch, save_dtype))
    pipe.save_pretrained(path, max_shard_size="1GB")  # small shards: less memory to write and to load


def make_instance_images(folder: Path, size: int, n: int = N_IMAGES) -> Path:
    """`n` square images (rendered shapes on noise): square, so the trainer's crop is never random."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        im = Image.fromarray(noise)
        draw = ImageDraw.Draw(im)
        m = size // 6
        draw.ellipse((m + i * m // 4, m, size - m, size - m - i * m // 4), fill=(220, 40 + 50 * i, 30))
        draw.rectangle((size // 3, size // 3, size // 2, size // 2 + i * m // 3), fill=(20, 60, 200))
        im.save(folder / f"instance{i}.png")
    return folder


def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One `run_training` call; returns the step intervals after warm-up (and the CUDA peak)."""
    import torch

    from moslora_diffusion.training import TrainEvent, parse_args, run_training

    torch.set_num_threads(spec["threads"])
    stamps: list[tuple[float, float]] = []

    def on_event(event: TrainEvent) -> None:
        if event.kind == "step":  # after the loss is read back (a device sync), so the interval is real
            stamps.append((time.perf_counter(), time.process_time()))

    argv = [
        "--pretrained_model_name_or_path",
        spec["model_dir"],
        "--instance_data_dir",
        spec["images"],
        "--instance_prompt",
        INSTANCE_PROMPT,
        "--output_dir",
        spec["output_dir"],
        "--resolution",
        str(spec["resolution"]),
        "--adapter",
        spec["adapter"],
        "--rank",
        str(spec["rank"]),
        "--train_batch_size",
        "1",
        "--max_train_steps",
        str(1 + spec["warmup"] + spec["steps"]),
        "--checkpointing_steps",
        "0",
        "--mixed_precision",
        spec["mixed_precision"],
        "--seed",
        "0",
        *CACHE_MODES[spec["mode"]],
    ]
    cfg = parse_args(argv)
    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_training(cfg, callback=on_event)
    run_s = time.perf_counter() - started
    if result.steps_done != 1 + spec["warmup"] + spec["steps"]:
        raise RuntimeError(f"expected {1 + spec['warmup'] + spec['steps']} steps, got {result.steps_done}")
    walls = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return {
        "step_times": walls[spec["warmup"] :],
        "cpu_times": cpu[spec["warmup"] :],
        "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "wall_s": run_s,
    }


# ----------------------------------------------------------------------------- tables


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}"


def tables(results: list[Result], cuda: bool) -> tuple[str, str]:
    """(per-configuration table, ratio table) in markdown."""
    headers = [
        "model",
        "caches",
        "adapter",
        "median s/step",
        "min-max s/step",
        "median CPU s/step",
        "peak RSS MiB",
    ]
    if cuda:
        headers.append("peak GPU MiB")
    rows = []
    for r in results:
        row: list[object] = [
            r.model.label,
            r.mode,
            r.adapter,
            f"{r.median:.3f}",
            f"{min(r.step_times):.3f}-{max(r.step_times):.3f}",
            f"{r.cpu_median:.3f}",
            f"{r.rss_mib:.0f}",
        ]
        if cuda:
            row.append(f"{r.gpu_mib:.0f}")
        rows.append(row)
    per_config = markdown_table(headers, rows)

    def mem(r: Result) -> float:
        return r.gpu_mib if cuda and r.gpu_mib is not None else r.rss_mib

    by_key = {(r.model, r.mode, r.adapter): r for r in results}
    ratio_rows = []

    def compare(model: Model, what: str, a: Result, b: Result) -> None:
        ratio_rows.append([model.label, what, _ratio(a.median, b.median), _ratio(a.cpu_median, b.cpu_median),
                           _ratio(mem(a), mem(b))])  # fmt: skip

    for model in dict.fromkeys(r.model for r in results):
        modes = [m for m in CACHE_MODES if (model, m, "lora") in by_key]
        for mode in modes:
            compare(model, f"moslora / lora, caches {mode}", by_key[(model, mode, "moslora")],
                    by_key[(model, mode, "lora")])  # fmt: skip
        if "latents+text" in modes:
            for mode in modes[1:]:
                for adapter in ADAPTERS:
                    compare(model, f"cached / uncached, latents+text / {mode}, {adapter}",
                            by_key[(model, "latents+text", adapter)], by_key[(model, mode, adapter)])  # fmt: skip
        plain = replace(model, precision="no")
        for mode in CACHE_MODES:
            for adapter in ADAPTERS:
                if model != plain and (model, mode, adapter) in by_key and (plain, mode, adapter) in by_key:
                    compare(model, f"{model.precision} / fp32, caches {mode}, {adapter}",
                            by_key[(model, mode, adapter)], by_key[(plain, mode, adapter)])  # fmt: skip
    ratios = markdown_table(
        [
            "model",
            "comparison",
            "s/step ratio",
            "CPU s/step ratio",
            "peak " + ("GPU" if cuda else "RSS") + " ratio",
        ],
        ratio_rows,
    )
    return per_config, ratios


# ----------------------------------------------------------------------------- main


def preload() -> None:
    """Import what the children need, so that each fork starts with it (no tensor op, no CUDA call here)."""
    import diffusers  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch  # noqa: F401
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    from moslora_diffusion.training import run_training  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (SD 1.5 at 512 px and SDXL at 1024 px)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the (always untimed) first")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--modes", default=",".join(CACHE_MODES), help="cache modes to run, comma-separated")
    ap.add_argument(
        "--mixed_precision",
        default=None,
        help="trainer's --mixed_precision, or several side by side (no,bf16); default no (CPU), bf16 (CUDA)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run; default 1 on CPU (see below), 2 on CUDA",
    )
    ap.add_argument("--tiny", action="store_true", help="tiny pipelines (moslora_diffusion.tiny), 32 px")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be at least 1 and --warmup not negative")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in CACHE_MODES]
    if unknown or not modes:
        ap.error(f"--modes: unknown {unknown}; choose from {', '.join(CACHE_MODES)}")
    cuda = args.device.startswith("cuda")
    precisions = [
        p.strip() for p in (args.mixed_precision or ("bf16" if cuda else "no")).split(",") if p.strip()
    ]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        ap.error(f"--mixed_precision: choose from {', '.join(PRECISIONS)} (comma-separated)")
    mixed = ", ".join(precisions)
    # One thread on CPU: its CPU time per step is then the work done, whatever else runs on the machine;
    # with two OpenMP threads, a descheduled thread makes the other spin, inflating CPU time as well.
    threads = args.threads or (2 if cuda else 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    preload()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    results: list[Result] = []
    try:
        for model in [
            replace(m, precision=p) for p in precisions for m in models_for(args.device, args.tiny)
        ]:
            model_dir = tmp / f"{model.arch}-{model.precision}"
            t0 = time.perf_counter()
            save_dtype = PRECISIONS[model.precision]
            _, build_rss = run_forked(build_model_dir, model, args.tiny, save_dtype, str(model_dir))
            print(
                f"built {model.label} ({save_dtype}) in {time.perf_counter() - t0:.0f}s, peak RSS {build_rss:.0f} MiB"
            )
            images = make_instance_images(tmp / f"images-{model.resolution}", model.resolution)
            for i, mode in enumerate(modes):
                order = ADAPTERS if i % 2 == 0 else ADAPTERS[::-1]  # alternate who runs first
                for adapter in order:
                    spec = dict(
                        model_dir=str(model_dir),
                        images=str(images),
                        output_dir=str(tmp / f"out-{model.arch}-{mode}-{adapter}"),
                        resolution=model.resolution,
                        adapter=adapter,
                        rank=args.rank,
                        mode=mode,
                        steps=args.steps,
                        warmup=args.warmup,
                        mixed_precision=model.precision,
                        device=args.device,
                        threads=threads,
                    )
                    out, rss = run_forked(train_child, spec)
                    res = Result(
                        model,
                        mode,
                        adapter,
                        out["step_times"],
                        out["cpu_times"],
                        rss,
                        out["gpu_mib"],
                        out["wall_s"],
                    )
                    results.append(res)
                    shutil.rmtree(spec["output_dir"], ignore_errors=True)
                    print(
                        f"{model.label} caches={mode} {adapter}: median {res.median:.3f} s/step "
                        f"({len(res.step_times)} steps), peak RSS {rss:.0f} MiB, run {res.wall_s:.0f}s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    per_config, ratios = tables(results, cuda)
    print(per_config)
    print()
    print(ratios)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    dict(
                        arch=r.model.arch,
                        precision=r.model.precision,
                        resolution=r.model.resolution,
                        mode=r.mode,
                        adapter=r.adapter,
                        step_times=r.step_times,
                        median=r.median,
                        cpu_times=r.cpu_times,
                        cpu_median=r.cpu_median,
                        rss_mib=r.rss_mib,
                        gpu_mib=r.gpu_mib,
                    )
                    for r in results
                ],
                indent=1,
            )
        )
    if not args.no_docs:
        import torch

        torch.set_num_threads(threads)  # so that the machine line names the threads the runs used
        what = (
            "tiny pipelines (moslora_diffusion.tiny)" if args.tiny else "real architectures, random weights"
        )
        body = (
            f"DreamBooth training through `run_training` ({what}), batch 1, {N_IMAGES} square instance images, "
            f"rank {args.rank}, UNet attention targets, trainer `--mixed_precision {mixed}`, device {args.device}, "
            f"{threads} torch thread(s) per run; each configuration is one training run in its own process; "
            f"median of {args.steps} step(s) after {args.warmup} warm-up step(s) (the first step is never timed). "
            "Caches: `latents+text` = no flags (VAE latents and prompt embeddings cached); `text` = "
            "`--random_flip` (VAE encodes every step); `none+TE` = `--random_flip --train_text_encoder` "
            "(nothing cached, and the text-encoder adapters are trained too: not the cache's effect alone). "
            "CPU s/step: CPU seconds of the training process (all its threads) per step; with one torch thread "
            "this is the work per step, which other processes on a shared machine hardly change, while the wall "
            "time grows with their load. "
            "Peak RSS includes loading the model. Configurations run one after another on a shared machine: "
            "read the ratios, not the absolute times.\n\n"
            f"{per_config}\n\nRatios:\n\n{ratios}\n"
        )
        if not cuda:
            body += (
                "\nNot measured here (no GPU): `--device cuda` runs SD 1.5 at 512 px and SDXL at 1024 px in bf16, "
                "batch 1, and adds the CUDA allocator's peak.\n"
            )
        append_section("DreamBooth training: MoSLoRA vs LoRA, caches on/off", body, device=args.device)


if __name__ == "__main__":
    main()
