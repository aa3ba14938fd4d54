"""MoSLoRA vs PEFT LoRA: training-step time and peak memory at equal rank, and adapter inference cost.

SD 1.5-architecture UNet with random weights, attention targets. Step times are measured interleaved in one
process (round-robin over configurations, so machine noise hits all alike) and reported as medians and as
ratios to LoRA. Peak memory: on CUDA from the allocator; on CPU from the peak RSS of a fresh subprocess per
configuration. Inference: one UNet forward of base vs unfused adapter vs fused (merged) adapter.

    python benchmarks/bench_adapter.py                      # CPU, 256 px, fp32
    python benchmarks/bench_adapter.py --device cuda --resolution 512 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_base(device: str, dtype: torch.dtype):
    from moslora_diffusion.architectures import build_unet

    torch.manual_seed(0)
    unet = build_unet("sd1").to(device=device, dtype=dtype)
    unet.requires_grad_(False)
    return unet


def add_adapter(unet, kind: str, rank: int) -> str:
    """Add an adapter named '<kind>-r<rank>' to the shared UNet; trainable weights in fp32."""
    from peft import LoraConfig

    from moslora_diffusion import MoSLoraConfig, add_moslora_adapter, resolve_targets

    name = f"{kind}-r{rank}"
    targets = resolve_targets("attn")
    if kind == "moslora":
        add_moslora_adapter(
            unet, MoSLoraConfig(r=rank, lora_alpha=rank, target_modules=targets), adapter_name=name
        )
    else:
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), adapter_name=name)
    for n, p in unet.named_parameters():
        if f".{name}." in n:
            p.data = p.data.float()
    return name


def build(kind: str, rank: int, device: str, dtype: torch.dtype):
    unet = build_base(device, dtype)
    unet.set_adapter(add_adapter(unet, kind, rank))
    return unet


def make_batch(resolution: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    lat = resolution // 8
    return (
        torch.randn(1, 4, lat, lat, generator=g).to(device, dtype),
        torch.tensor([500], device=device),
        torch.randn(1, 77, 768, generator=g).to(device, dtype),
    )


def make_step(unet, batch, device, adapter: str | None = None):
    """A closure doing one AdamW training step of `adapter` (activated first when given)."""
    if adapter is not None:
        unet.set_adapter(adapter)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x, t, ctx = batch
    target = torch.randn_like(x)

    def step() -> float:
        if adapter is not None:
            unet.set_adapter(adapter)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(
            device_type=device.split(":")[0], dtype=x.dtype, enabled=x.dtype != torch.float32
        ):
            out = unet(x, t, ctx).sample
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def memory_probe(kind: str, rank: int, args) -> float:
    """Peak memory (MiB) of two training steps of one configuration."""
    dtype = DTYPES[args.dtype]
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        unet = build(kind, rank, args.device, dtype)
        step = make_step(unet, make_batch(args.resolution, args.device, dtype), args.device)
        step()
        step()
        peak = torch.cuda.max_memory_allocated() / 2**20
        del unet, step
        return peak
    cmd = [sys.executable, __file__, "--_probe", kind, str(rank), "--resolution", str(args.resolution)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def probe_main(kind: str, rank: int, resolution: int) -> None:
    unet = build(kind, rank, "cpu", torch.float32)
    step = make_step(unet, make_batch(resolution, "cpu", torch.float32), "cpu")
    step()
    step()
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--ranks", default="4,16")
    ap.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md")
    ap.add_argument("--_probe", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._probe:
        probe_main(args._probe[0], int(args._probe[1]), args.resolution)
        return
    torch.set_num_threads(torch.get_num_threads())
    dtype = DTYPES[args.dtype]
    ranks = [int(r) for r in args.ranks.split(",")]
    batch = make_batch(args.resolution, args.device, dtype)

    # --- training step: interleaved -------------------------------------------------------------------
    # One UNet holds all adapters (base weights shared, so memory stays at one model); each step activates
    # and trains one adapter.
    configs = [(kind, r) for r in ranks for kind in ("lora", "moslora")]
    shared = build_base(args.device, dtype)
    # MoSLoRA first: its layer class also holds plain LoRA adapters (the reverse order is refused).
    names = {c: add_adapter(shared, *c) for c in sorted(configs, key=lambda c: c[0] != "moslora")}
    steps = {c: make_step(shared, batch, args.device, names[c]) for c in configs}
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.warmup):
        for c in configs:
            steps[c]()
    for i in range(args.steps):
        for c in configs:
            times[c].append(steps[c]())
        print(
            f"round {i + 1}/{args.steps}: "
            + ", ".join(f"{k}-r{r} {times[(k, r)][-1]:.2f}s" for k, r in configs)
        )
    del steps, shared
    rows = []
    for r in ranks:
        lora_med = statistics.median(times[("lora", r)])
        for kind in ("lora", "moslora"):
            med = statistics.median(times[(kind, r)])
            mem = memory_probe(kind, r, args)
            rows.append([kind, r, f"{med:.3f}", f"{med / lora_med:.3f}", f"{mem:.0f}"])
    train_table = markdown_table(["adapter", "rank", "median s/step", "ratio to LoRA", "peak MiB"], rows)
    print(train_table)

    # --- inference: base vs unfused vs fused ---------------------------------------------------------
    from peft.tuners.lora.layer import LoraLayer

    unet = build("moslora", ranks[0], args.device, dtype).eval()
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.01)
    x, t, ctx = batch
    x, ctx = x.to(dtype), ctx.to(dtype)
    for p in unet.parameters():
        p.data = p.data.to(dtype)
    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]

    def forward() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            unet(x, t, ctx)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def set_mode(mode: str) -> None:
        for layer in layers:
            if layer.merged:
                layer.unmerge()
        if mode == "base":
            unet.disable_adapters()
        else:
            unet.enable_adapters()
            if mode == "fused":
                for layer in layers:
                    layer.merge()

    modes = ["base", "unfused", "fused"]
    inf: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.warmup + args.steps):
        for m in modes:
            set_mode(m)
            dt = forward()
            if i >= args.warmup:
                inf[m].append(dt)
    base_med = statistics.median(inf["base"])
    inf_rows = [
        [m, f"{statistics.median(inf[m]):.3f}", f"{statistics.median(inf[m]) / base_med:.3f}"] for m in modes
    ]
    inf_table = markdown_table(["UNet forward", "median s", "ratio to base"], inf_rows)
    print(inf_table)

    if not args.no_docs:
        body = (
            f"SD 1.5-architecture UNet, random weights, attention targets (to_q/k/v/out.0), {args.resolution} px, "
            f"batch 1, {args.dtype}, device {args.device}; {args.steps} measured steps after {args.warmup} warm-up, "
            f"configurations interleaved round-robin. Target: MoSLoRA/LoRA step time <= 1.03, fused = base.\n\n"
            f"Training step:\n\n{train_table}\n\nInference (MoSLoRA rank {ranks[0]}):\n\n{inf_table}\n"
        )
        append_section("MoSLoRA vs LoRA: training step and inference", body, device=args.device)


if __name__ == "__main__":
    main()
