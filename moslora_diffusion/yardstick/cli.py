"""`moslora-diffusion eval-toyworld`: run a study, print its tables, write results.json, plots and a grid."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..durable import write_atomic
from ..errors import RequestError
from ..toyworld.subject import get_subject
from .config import METHOD_KEYS, BenchConfig, parse_train_args
from .report import append_study_section, paired_table, plot, plot_curves, sample_grid, summary_table
from .runs import run_bench

__all__ = ["config_from_args", "run_cli"]


def _check_workers(workers: int) -> int:
    """``--workers`` within 1 and the machine's cores (more processes only fight for them)."""
    cores = os.cpu_count() or 1
    if not 1 <= workers <= cores:
        raise RequestError(f"--workers {workers}: choose 1 to {cores} (this machine's cores)")
    return workers


def _check_study_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write over a previous study's results unless asked to."""
    results = out / "results.json"
    if results.exists() and not overwrite:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(results.stat().st_mtime))
        raise RequestError(
            f"--output_dir {out} holds a previous study (results.json of {stamp}); use another --output_dir, "
            "or --overwrite_output_dir to replace it"
        )


def config_from_args(args: Any) -> BenchConfig:
    """The study the command line asks for (``--smoke``, ``--quick`` or the full one), checked."""
    extra = {
        k: v
        for k, v in {
            "learning_rate": getattr(args, "learning_rate", None),
            "mixer_init": getattr(args, "mixer_init", None),
            "unet_targets": getattr(args, "unet_targets", None),
            "train_text_encoder": True if getattr(args, "train_text_encoder", False) else None,
        }.items()
        if v is not None
    }
    extra.update(parse_train_args(getattr(args, "train_arg", None) or []))
    methods = tuple(m.strip() for m in (getattr(args, "methods", None) or ",".join(METHOD_KEYS)).split(","))
    subject = get_subject(getattr(args, "subject", None)).key
    common = dict(output_dir=args.output_dir, extra_train_args=extra, subject=subject)
    if getattr(args, "smoke", False):
        cfg = BenchConfig.smoke_config(**common)
    elif args.quick:
        cfg = BenchConfig.recheck_config(rank=args.rank, **common)
    else:
        cfg = BenchConfig(
            rank=args.rank, seeds=args.seeds, max_train_steps=args.max_train_steps,
            images_per_prompt=args.images_per_prompt, method_names=methods,
            curves=bool(getattr(args, "curves", False)), **common,
        )  # fmt: skip
    unknown = set(cfg.method_names) - set(METHOD_KEYS)
    if unknown:
        raise RequestError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHOD_KEYS)}")
    if cfg.seeds < 2:
        raise RequestError("--seeds must be at least 2 for a confidence interval")
    return cfg


def run_cli(args: Any) -> int:
    """`moslora-diffusion eval-toyworld`: run, print the table, write results.json, the plots and the grid
    into the output folder, and with ``--docs PATH`` a dated section (with copies of the figures) to PATH."""
    cfg = config_from_args(args)
    workers = _check_workers(int(getattr(args, "workers", 1)))
    _check_study_folder(Path(cfg.output_dir), bool(getattr(args, "overwrite_output_dir", False)))
    docs = getattr(args, "docs", None)
    result = run_bench(cfg, workers=workers)
    out = Path(cfg.output_dir)
    write_atomic(out / "results.json", json.dumps(result, indent=2))
    table = summary_table(result)
    paired = paired_table(result)
    if paired:
        table += "\n\n" + paired
    plot_path = plot(result, out / "eval_toyworld.png")
    plot_curves(result, out / "eval_toyworld_curves.png")
    samples = sample_grid(result, out / "eval_toyworld_samples.png")
    print(table)
    print(
        f"\n{len(result['runs'])} adapters trained and scored in {result['seconds'] / 60:.1f} min; plot: {plot_path}"
    )
    if docs:
        append_study_section(Path(docs), result, cfg, table, samples, workers, quick=bool(args.quick))
    return 0
