"""Running a yardstick study: train and score every method x seed, in this process or in worker processes."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..toyworld.scoring import METRICS, generate_families, prompt_sets, score_images
from ..toyworld.subject import get_subject
from .config import BenchConfig

__all__ = ["train_adapter", "run_bench"]


def train_adapter(
    adapter: str, rank: int, seed: int, output_dir: Path, cfg: BenchConfig, curve: bool = False
) -> tuple[Path, list[dict[str, float]]]:
    """Train one DreamBooth adapter on the bundled subject; return its weights file and, with ``curve``,
    the learning curve (the toy scorer every ``curve_every`` steps)."""
    from ..toyworld.defaults import training_defaults
    from ..toyworld.quality import validation_scorer
    from ..training import parse_args, run_training

    subject = get_subject(cfg.subject)
    args = ["--adapter", adapter, "--rank", str(rank), "--seed", str(seed), "--output_dir", str(output_dir)]
    args += ["--checkpointing_steps", "0", "--validation_prompt", ""]  # "" = no validation images
    args += ["--overwrite_output_dir"]  # a re-run of the study replaces its own runs
    args += ["--instance_data_dir", str(subject.path)]
    if curve:
        args += ["--validation_steps", str(cfg.curve_every)]
    if cfg.max_train_steps is not None:
        args += ["--max_train_steps", str(cfg.max_train_steps)]
    for key, value in cfg.extra_train_args.items():
        if value is True or value is False:  # a switch: --flag / --no-flag
            args.append(f"--{key}" if value else f"--no-{key}")
        else:
            args += [f"--{key}", str(value)]
    scorer = validation_scorer(subject=subject) if curve else None
    result = run_training(parse_args(args, defaults=training_defaults(args)), scorer=scorer)
    if result.weights_path is None:
        raise RuntimeError(f"training {adapter} r={rank} seed={seed} produced no weights")
    quality = []
    if curve and "quality" in result.files:
        quality = json.loads(Path(result.files["quality"]).read_text())
    return Path(result.weights_path), quality


def read_signals(weights: Path) -> list[dict[str, float]]:
    """The learning signals a run wrote beside its adapter (step 0 and every validation), or []."""
    from ..training.signals import SIGNALS_NAME

    path = Path(weights).parent / SIGNALS_NAME
    return json.loads(path.read_text())["signals"] if path.is_file() else []


_WORKER_PIPE: Any = None


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when ``parent`` is gone: a killed study must not leave workers training on."""
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _worker_init(log_dir: str, parent: int) -> None:
    """One torch thread; the worker's own output (progress bars, summaries) into ``log_dir``: the parent
    shows one progress bar over all runs."""
    import os

    import torch

    from ..quiet import quiet_entry_point

    quiet_entry_point()  # the same library notices the parent's entry point drops
    _exit_with_parent(parent)
    log = os.open(os.path.join(log_dir, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    torch.set_num_threads(1)


def _score_adapter(weights: Path, name: str, sets: dict[str, list], subject: str) -> dict[str, float]:
    from ..toyworld.evaluate import load_toy_pipeline

    global _WORKER_PIPE
    if _WORKER_PIPE is None:
        _WORKER_PIPE = load_toy_pipeline()
    pipe = _WORKER_PIPE
    adapter = pipe.load_moslora_weights(str(weights), adapter_name=name)
    try:
        return score_images(generate_families(pipe, sets), sets, subject)
    finally:
        pipe.delete_adapters(adapter)


def _run_one(task: tuple[str, str, int, int, BenchConfig, str]) -> dict[str, Any]:
    """Train and score one (method, seed); runs in the parent or in a worker process."""
    label, adapter, rank, seed, cfg, work = task
    t0 = time.time()
    name = f"{adapter}_r{rank}_s{seed}"
    weights, curve = train_adapter(adapter, rank, seed, Path(work) / name, cfg, curve=cfg.curves)
    scores = _score_adapter(
        weights, name, prompt_sets(cfg.images_per_prompt, cfg.quick, cfg.subject), cfg.subject
    )
    return {"method": label, "adapter": adapter, "rank": rank, "seed": seed, **scores, "curve": curve,
            "signals": read_signals(weights) if cfg.curves else [], "seconds": time.time() - t0,
            "weights": str(weights)}  # fmt: skip


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print, workers: int = 1) -> dict[str, Any]:
    """Train and score every method x seed (``workers`` processes at a time); return scores and summaries."""
    from tqdm.auto import tqdm

    from ..toyworld.evaluate import load_toy_pipeline

    started = time.time()
    sets = prompt_sets(cfg.images_per_prompt, cfg.quick, cfg.subject)
    work = Path(cfg.output_dir) if cfg.output_dir else Path(tempfile.mkdtemp(prefix="eval-toyworld-"))
    work.mkdir(parents=True, exist_ok=True)
    base_scores = score_images(generate_families(load_toy_pipeline(), sets), sets, cfg.subject)
    log(f"base model: {json.dumps({k: round(v, 3) for k, v in base_scores.items()})}")
    # seeds outermost: a stopped study has every method at the seeds it finished (paired)
    tasks = [(label, adapter, rank, seed, cfg, str(work))
             for seed in range(cfg.seeds) for label, adapter, rank in cfg.methods()]  # fmt: skip
    runs: list[dict[str, Any]] = []

    def done(run: dict[str, Any]) -> None:
        runs.append(run)
        shown = json.dumps({k: round(run[k], 3) for k in METRICS})
        log(f"{run['method']} seed {run['seed']}: {shown} ({run['seconds']:.0f}s)")

    if workers <= 1:
        for task in tasks:
            done(_run_one(task))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_init, initargs=(str(logs), os.getpid())
        ) as pool:
            futures = [pool.submit(_run_one, task) for task in tasks]
            for future in tqdm(as_completed(futures), total=len(futures), desc="adapters", unit="run"):
                done(future.result())
    runs.sort(key=lambda r: (r["seed"], [m[0] for m in cfg.methods()].index(r["method"])))
    return {
        "base": base_scores,
        "runs": runs,
        "methods": [m[0] for m in cfg.methods()],
        "seconds": time.time() - started,
        "config": dataclasses.asdict(cfg),
        "n_images": {k: len(v) for k, v in sets.items()},
    }
