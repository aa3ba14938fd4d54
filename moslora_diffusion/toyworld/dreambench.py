"""A DreamBench-style yardstick in the toy world: how well did a DreamBooth adapter learn the subject?

For each method (MoSLoRA at rank r, LoRA at rank r, LoRA at rank 2r) and each seed, one adapter is trained
on a bundled subject (:data:`subject.SUBJECTS`) through the training library, then scored with the attribute
reader and the subject's detector:

- subject fidelity: images for "a sks circle on a {bg} background" (the subject's instance prompt) that show
  the subject;
- prompt fidelity: of those prompts, images whose background has the requested colour;
- prior preservation: images for class prompts ("a {colour} circle on a {bg} background"; "a {colour} shape
  ..." for a subject whose class noun is "shape") that draw the class with the requested attributes and not
  the subject;
- base drift: all-three-attributes accuracy on a fixed panel of ordinary prompts (the 12 held-out
  combinations: every shape three times, every colour twice as object and twice as background) with the
  adapter loaded; the base model's own accuracy is the reference row.

Paired design: for a given seed every method sees the same data order, noise and timesteps (the trainer draws
them from generators seeded by the run seed alone), and every adapter is scored on the same prompts with the
same sampling seeds, so a per-seed difference between two methods is the methods' difference. Every number is
a mean over seeds with a t-based 95% confidence interval, and the paired differences MoSLoRA − LoRA get their
own intervals (from the per-seed differences, which is tighter than comparing two intervals).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RequestError
from .data import HELD_OUT_COMBOS
from .render import COLORS, caption
from .subject import CLASS_PROMPT, Subject, get_subject

METRICS = ("subject_fidelity", "prompt_fidelity", "prior_preservation", "base_drift_accuracy")
METRIC_LABELS = {
    "subject_fidelity": "subject fidelity",
    "prompt_fidelity": "prompt fidelity",
    "prior_preservation": "prior preservation",
    "base_drift_accuracy": "ordinary prompts (all 3 right)",
}


METHOD_KEYS = (
    "moslora",
    "lora",
    "lora-2r",
)  # --methods: MoSLoRA r, LoRA r, LoRA 2r (see BenchConfig.methods)


@dataclasses.dataclass
class BenchConfig:
    """What `eval-toyworld` runs. `quick` shrinks everything for tests."""

    rank: int = 8  # the subject's own training default
    seeds: int = 10
    max_train_steps: int | None = None  # None: the subject's own training defaults
    images_per_prompt: int = 4
    output_dir: str | None = None
    quick: bool = False  # fewer prompts (tests)
    extra_train_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_names: tuple[str, ...] = METHOD_KEYS
    curves: bool = False  # record each run's learning curve (the toy scorer every `curve_every` steps)
    curve_every: int = 100
    subject: str = "circle"  # a key of subject.SUBJECTS

    def methods(self) -> list[tuple[str, str, int]]:
        table = {
            "moslora": (f"MoSLoRA r={self.rank}", "moslora", self.rank),
            "lora": (f"LoRA r={self.rank}", "lora", self.rank),
            "lora-2r": (f"LoRA r={2 * self.rank}", "lora", 2 * self.rank),
        }
        return [table[name] for name in self.method_names]

    @classmethod
    def smoke_config(cls, **kw: Any) -> BenchConfig:
        """A run for tests: 2 seeds, 4 steps, one image per prompt, few prompts."""
        base = dict(seeds=2, max_train_steps=4, images_per_prompt=1, quick=True)
        base.update(kw)
        return cls(**base)

    @classmethod
    def recheck_config(cls, **kw: Any) -> BenchConfig:
        """`--quick`: MoSLoRA vs LoRA at equal rank, 3 seeds, the full recipe, 2 images per prompt."""
        base = dict(seeds=3, images_per_prompt=2, method_names=("moslora", "lora"))
        base.update(kw)
        return cls(**base)


def prompt_sets(
    images_per_prompt: int, quick: bool, subject: Subject | str | None = None
) -> dict[str, list[tuple[str, tuple[str | None, str, str], int]]]:
    """(prompt, expected (shape, colour, background), sampling seed) for each metric family; a class shape of
    None (class noun "shape") accepts any of the world's shapes."""
    subj = get_subject(subject)
    backgrounds = subj.backgrounds[:2] if quick else subj.backgrounds
    subject_items = [
        (f"{subj.instance_prompt} on a {bg} background", (subj.outline, "", bg), 1000 + k)
        for bg in backgrounds
        for k in range(images_per_prompt)
    ]
    palette = list(COLORS)
    class_items = []
    for i, colour in enumerate(palette[: 2 if quick else None]):
        bg = palette[(i + 2) % len(palette)]  # every colour once as object, on a different background
        for k in range(images_per_prompt):
            class_items.append(
                (caption(subj.class_shape, colour, bg), (subj.class_shape, colour, bg), 2000 + 10 * i + k)
            )
    ordinary_combos = list(HELD_OUT_COMBOS)[: 2 if quick else None]  # every shape, every colour
    ordinary = [
        (caption(*c), c, 3000 + 10 * i + k)
        for i, c in enumerate(ordinary_combos)
        for k in range(images_per_prompt)
    ]
    return {"subject": subject_items, "class": class_items, "ordinary": ordinary}


def score_images(
    family_images: dict[str, list], prompt_sets: dict[str, list], subject: Subject | str | None = None
) -> dict[str, float]:
    """The four metrics from generated images (lists aligned with `prompt_sets`; an empty family gives nan)."""
    from .reader import read_attributes

    detect = get_subject(subject).detect
    items = prompt_sets["subject"]
    subject_hits = [detect(im) for im in family_images["subject"]]
    bg_hits = [
        read_attributes(im).background == exp[2] for im, (_, exp, _) in zip(family_images["subject"], items)
    ]
    prior_hits = []
    for im, ((shape, colour, bg)) in zip(family_images["class"], (exp for _, exp, _ in prompt_sets["class"])):
        r = read_attributes(im)
        drawn = r.shape is not None and (shape is None or r.shape == shape)
        prior_hits.append(drawn and (r.color, r.background) == (colour, bg) and not detect(im))
    ordinary_hits = [
        read_attributes(im).matches(*exp)
        for im, (_, exp, _) in zip(family_images["ordinary"], prompt_sets["ordinary"])
    ]

    def mean(x: Sequence[bool]) -> float:
        return sum(x) / len(x) if x else float("nan")

    return {
        "subject_fidelity": mean(subject_hits),
        "prompt_fidelity": mean(bg_hits),
        "prior_preservation": mean(prior_hits),
        "base_drift_accuracy": mean(ordinary_hits),
    }


def _generate_families(pipe, sets: dict[str, list]) -> dict[str, list]:
    from .evaluate import generate

    order = [(fam, item) for fam, items in sets.items() for item in items]
    images = generate(pipe, [p for _, (p, _, _) in order], [s for _, (_, _, s) in order])
    out: dict[str, list] = {fam: [] for fam in sets}
    for (fam, _), im in zip(order, images):
        out[fam].append(im)
    return out


def train_adapter(
    adapter: str, rank: int, seed: int, output_dir: Path, cfg: BenchConfig, curve: bool = False
) -> tuple[Path, list[dict[str, float]]]:
    """Train one DreamBooth adapter on the bundled subject; return its weights file and, with ``curve``,
    the learning curve (the toy scorer every ``curve_every`` steps)."""
    from ..training import parse_args, run_training
    from .defaults import training_defaults
    from .quality import validation_scorer

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
    from .evaluate import load_pipeline

    global _WORKER_PIPE
    if _WORKER_PIPE is None:
        _WORKER_PIPE = load_pipeline()
    pipe = _WORKER_PIPE
    adapter = pipe.load_moslora_weights(str(weights), adapter_name=name)
    try:
        return score_images(_generate_families(pipe, sets), sets, subject)
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
            "seconds": time.time() - t0, "weights": str(weights)}  # fmt: skip


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print, workers: int = 1) -> dict[str, Any]:
    """Train and score every method x seed (``workers`` processes at a time); return scores and summaries."""
    from tqdm.auto import tqdm

    from .evaluate import load_pipeline

    started = time.time()
    sets = prompt_sets(cfg.images_per_prompt, cfg.quick, cfg.subject)
    work = Path(cfg.output_dir) if cfg.output_dir else Path(tempfile.mkdtemp(prefix="eval-toyworld-"))
    work.mkdir(parents=True, exist_ok=True)
    base_scores = score_images(_generate_families(load_pipeline(), sets), sets, cfg.subject)
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


def summary_table(result: dict[str, Any]) -> str:
    """Markdown table: mean ± 95% CI (percent) per method and metric, plus the base model row."""
    from ..stats import format_mean_ci

    head = "| method | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    base = result["base"]
    lines.append("| base model (no adapter) | " + " | ".join(f"{100 * base[m]:.1f}" for m in METRICS) + " |")
    for method in result["methods"]:
        runs = [r for r in result["runs"] if r["method"] == method]
        lines.append(
            f"| {method} | " + " | ".join(format_mean_ci([r[m] for r in runs]) for m in METRICS) + " |"
        )
    return "\n".join(lines)


def paired_table(result: dict[str, Any]) -> str:
    """Markdown table: the first method minus each other one, per metric, paired by seed (points, 95% CI)."""
    from ..stats import format_mean_ci
    from .pairing import paired_differences, per_seed

    methods = result["methods"]
    if len(methods) < 2:
        return ""
    head = "| paired difference (points) | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    first = methods[0]
    for other in methods[1:]:
        seeds, diffs = paired_differences(per_seed(result, first), per_seed(result, other))
        cells = [format_mean_ci(diffs[m]) for m in METRICS]
        lines.append(f"| {first} − {other} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of the metrics per method with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..stats import mean_ci95

    methods = result["methods"]
    x = np.arange(len(METRICS))
    width = 0.8 / (len(methods) + 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(
        x - 0.4 + width / 2,
        [100 * result["base"][m] for m in METRICS],
        width,
        label="base model",
        color="0.7",
    )
    for i, method in enumerate(methods):
        runs = [r for r in result["runs"] if r["method"] == method]
        stats = [mean_ci95([r[m] for r in runs]) for m in METRICS]
        means = [100 * s[0] for s in stats]
        errs = [0 if np.isnan(s[1]) else 100 * s[1] for s in stats]
        ax.bar(x - 0.4 + width * (i + 1.5), means, width, yerr=errs, capsize=3, label=method)
    ax.set_xticks(x, [METRIC_LABELS[m] for m in METRICS])
    ax.set_ylabel("% of images")
    ax.set_ylim(0, 105)
    ax.set_title(f"Toy-world DreamBooth yardstick ({result['config']['seeds']} seeds, mean ± 95% CI)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    fig.tight_layout()  # the legend below the axes: it never hides a bar
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "BenchConfig",
    "run_bench",
    "prompt_sets",
    "score_images",
    "summary_table",
    "paired_table",
    "plot",
    "sample_grid",
    "CLASS_PROMPT",
]


CURVE_METRICS = {"subject fidelity": "subject fidelity", "ordinary prompts": "ordinary prompts (all 3 right)"}


def sample_grid(result: dict[str, Any], path: str | Path, seeds: int = 2, sampling_seeds: int = 2) -> Path:
    """What the numbers look like: the subject prompt on each of the subject's backgrounds (``sampling_seeds``
    images each), one row for the base model, then one per method and training seed (the first ``seeds``),
    in the table's method order. Needs the runs' saved adapters."""
    from .evaluate import generate, load_pipeline, make_grid

    subject = get_subject(result["config"]["subject"])
    prompts = [f"{subject.instance_prompt} on a {bg} background" for bg in subject.backgrounds]
    prompts = [p for p in prompts for _ in range(sampling_seeds)]
    draw_seeds = [k for _ in subject.backgrounds for k in range(sampling_seeds)]
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, prompts, draw_seeds)
    for method in result["methods"]:
        for run in [r for r in result["runs"] if r["method"] == method][:seeds]:
            name = pipe.load_moslora_weights(run["weights"], adapter_name=f"{run['adapter']}_s{run['seed']}")
            try:
                images += generate(pipe, prompts, draw_seeds)
            finally:
                pipe.delete_adapters(name)
    path = Path(path)
    make_grid(images, ncols=len(prompts), scale=3).save(path)
    return path


def plot_curves(result: dict[str, Any], path: str | Path) -> Path | None:
    """Learning curves: each method's mean over seeds per step with a 95% CI band, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..stats import mean_ci95

    runs = [r for r in result["runs"] if r.get("curve")]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(10, 3.6))
    for ax, (key, label) in zip(axes, CURVE_METRICS.items()):
        for method in result["methods"]:
            by_step: dict[int, list[float]] = {}
            for r in runs:
                if r["method"] == method:
                    for point in r["curve"]:
                        by_step.setdefault(point["step"], []).append(point[key])
            steps = sorted(by_step)
            stats = [mean_ci95(by_step[s]) for s in steps]
            means = [100 * m for m, _ in stats]
            halves = [0.0 if h != h else 100 * h for _, h in stats]
            ax.plot(steps, means, marker="o", ms=3, label=method)
            ax.fill_between(steps, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)],
                            alpha=0.2)  # fmt: skip
        if key == "ordinary prompts":
            ax.axhline(100 * result["base"]["base_drift_accuracy"], color="0.5", ls=":", lw=1)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("% of images")
        ax.set_ylim(-2, 102)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Learning curves, mean ± 95% CI over {result['config']['seeds']} seeds (dotted: base model)"
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# Flags the yardstick sets itself for every run (method, seed, output) and so cannot take from --train_arg.
_BENCH_FLAGS = frozenset({"adapter", "rank", "seed", "output_dir", "overwrite_output_dir", "checkpointing_steps",
                          "validation_prompt", "validation_steps", "pretrained_model_name_or_path",
                          "instance_data_dir"})  # fmt: skip


def parse_train_args(items: list[str]) -> dict[str, Any]:
    """``--train_arg FLAG=VALUE`` (``FLAG`` / ``no-FLAG`` for a switch) into training flags for every run."""
    import dataclasses as dc

    from ..training.args import TrainConfig

    fields = {f.name for f in dc.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().removeprefix("--")
        switch_off = not sep and name.startswith("no-") and name[3:] in fields
        if switch_off:
            name = name[3:]
        if name not in fields:
            raise RequestError(f"--train_arg {item!r}: no training flag --{name}")
        if name in _BENCH_FLAGS:
            raise RequestError(f"--train_arg {item!r}: eval-toyworld sets --{name} itself for each run")
        out[name] = value if sep else not switch_off
    return out


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


def run_cli(args: Any) -> int:
    """`moslora-diffusion eval-toyworld`: run, print the table, write results.json, the plot and the docs section."""
    import shlex
    import sys

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
    if getattr(args, "smoke", False):
        cfg = BenchConfig.smoke_config(output_dir=args.output_dir, extra_train_args=extra, subject=subject)
    elif args.quick:
        cfg = BenchConfig.recheck_config(
            rank=args.rank, output_dir=args.output_dir, extra_train_args=extra, subject=subject
        )
    else:
        cfg = BenchConfig(
            rank=args.rank,
            seeds=args.seeds,
            max_train_steps=args.max_train_steps,
            images_per_prompt=args.images_per_prompt,
            output_dir=args.output_dir,
            extra_train_args=extra,
            method_names=methods,
            curves=bool(getattr(args, "curves", False)),
            subject=subject,
        )
    unknown = set(cfg.method_names) - set(METHOD_KEYS)
    if unknown:
        raise RequestError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHOD_KEYS)}")
    if cfg.seeds < 2:
        raise RequestError("--seeds must be at least 2 for a confidence interval")
    workers = _check_workers(int(getattr(args, "workers", 1)))
    _check_study_folder(Path(cfg.output_dir), bool(getattr(args, "overwrite_output_dir", False)))
    result = run_bench(cfg, workers=workers)
    out = Path(cfg.output_dir)
    (out / "results.json").write_text(json.dumps(result, indent=2))
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
    if not getattr(args, "no_docs", False) and not getattr(args, "smoke", False):
        import datetime

        from ..reporting import DOCS, append_section

        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
        images = DOCS.parent / "images"
        images.mkdir(parents=True, exist_ok=True)
        figures = [f"![eval-toyworld](images/{plot(result, images / f'eval_toyworld_{stamp}.png').name})"]
        curves = plot_curves(result, images / f"eval_toyworld_curves_{stamp}.png")
        if curves is not None:
            figures.append(f"![learning curves](images/{curves.name})")
        shutil.copyfile(samples, images / f"eval_toyworld_samples_{stamp}.png")
        figures.append(
            f"![samples: '{get_subject(cfg.subject).instance_prompt}' on each background; rows: base model, then "
            f"each method's first two seeds](images/eval_toyworld_samples_{stamp}.png)"
        )
        command = "moslora-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        n = result["n_images"]
        settings = ", ".join(f"--{k} {v}" for k, v in cfg.extra_train_args.items()) or "none"
        body = (
            (f"{workers} worker processes with 1 torch thread each. " if workers > 1 else "")
            + f"Each method trained on the bundled {cfg.subject!r} subject ({get_subject(cfg.subject).description}) "
            f"over {cfg.seeds} seeds with the subject's recipe "
            f"(changed: {settings}); per adapter {n['subject']} subject, {n['class']} class and {n['ordinary']} "
            "ordinary images (DDIM 25 steps, CFG 5). Percent of images, mean ± 95% CI over seeds; paired "
            "differences from per-seed differences (same data order, noise, timesteps and sampling seeds per "
            f"seed). Run time {result['seconds'] / 60:.1f} min{' (--quick)' if args.quick else ''}.\n\n"
            f"{table}\n\n" + "\n".join(figures) + "\n"
        )
        append_section(
            "Toy-world DreamBooth yardstick (eval-toyworld)",
            body,
            command=command,
            docs=DOCS.parent / "quality.md",
        )
    return 0
