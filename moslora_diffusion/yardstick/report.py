"""A study's tables, plots and sample grid, and its section in a docs file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..durable import write_figure, write_image
from ..toyworld.scoring import METRICS
from ..toyworld.subject import get_subject
from .config import METRIC_LABELS

__all__ = ["summary_table", "paired_table", "plot", "plot_curves", "sample_grid"]


def summary_table(result: dict[str, Any]) -> str:
    """Markdown table: mean ± 95% CI (percent) per method and metric, plus the base model row."""
    from .stats import format_mean_ci

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
    from .pairing import paired_differences, per_seed
    from .stats import format_mean_ci

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

    from .stats import mean_ci95

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
    return write_figure(path, fig, dpi=100)


CURVE_METRICS = {"subject fidelity": "subject fidelity", "ordinary prompts": "ordinary prompts (all 3 right)"}


def sample_grid(result: dict[str, Any], path: str | Path, seeds: int = 2, sampling_seeds: int = 2) -> Path:
    """What the numbers look like: the subject prompt on each of the subject's backgrounds (``sampling_seeds``
    images each), one row for the base model, then one per method and training seed (the first ``seeds``),
    in the table's method order. Needs the runs' saved adapters."""
    from ..imaging import tile
    from ..toyworld.evaluate import generate, load_toy_pipeline

    subject = get_subject(result["config"]["subject"])
    prompts = [f"{subject.instance_prompt} on a {bg} background" for bg in subject.backgrounds]
    prompts = [p for p in prompts for _ in range(sampling_seeds)]
    draw_seeds = [k for _ in subject.backgrounds for k in range(sampling_seeds)]
    pipe = load_toy_pipeline()
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
    write_image(path, tile(images, ncols=len(prompts), scale=3, pad=2))
    return path


def plot_curves(result: dict[str, Any], path: str | Path) -> Path | None:
    """Learning curves: each method's mean over seeds per step with a 95% CI band, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stats import mean_ci95

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
    return write_figure(path, fig, dpi=100)


def append_study_section(
    docs: Path, result: dict[str, Any], cfg: Any, table: str, samples: Path, workers: int, quick: bool
) -> None:
    """Append a dated section (command, settings, table, figures copied beside ``docs``) to ``docs``."""
    import datetime
    import shlex
    import shutil
    import sys

    from ..reporting import append_section

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    images = docs.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    figures = [f"![eval-toyworld](images/{plot(result, images / f'eval_toyworld_{stamp}.png').name})"]
    curves = plot_curves(result, images / f"eval_toyworld_curves_{stamp}.png")
    if curves is not None:
        figures.append(f"![learning curves](images/{curves.name})")
    shutil.copyfile(samples, images / f"eval_toyworld_samples_{stamp}.png")
    subject = get_subject(cfg.subject)
    figures.append(
        f"![samples: '{subject.instance_prompt}' on each background; rows: base model, then "
        f"each method's first two seeds](images/eval_toyworld_samples_{stamp}.png)"
    )
    n = result["n_images"]
    settings = ", ".join(f"--{k} {v}" for k, v in cfg.extra_train_args.items()) or "none"
    body = (
        (f"{workers} worker processes with 1 torch thread each. " if workers > 1 else "")
        + f"Each method trained on the bundled {cfg.subject!r} subject ({subject.description}) "
        f"over {cfg.seeds} seeds with the subject's recipe "
        f"(changed: {settings}); per adapter {n['subject']} subject, {n['class']} class and {n['ordinary']} "
        "ordinary images (DDIM 25 steps, CFG 5). Percent of images, mean ± 95% CI over seeds; paired "
        "differences from per-seed differences (same data order, noise, timesteps and sampling seeds per "
        f"seed). Run time {result['seconds'] / 60:.1f} min{' (--quick)' if quick else ''}.\n\n"
        f"{table}\n\n" + "\n".join(figures) + "\n"
    )
    command = "moslora-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    append_section("Toy-world DreamBooth yardstick (eval-toyworld)", body, command=command, docs=docs)
