"""Do the learning signals track quality, and where should --stop_when_learned stop? (issue: know when it's learned)

Trains MoSLoRA on both toy subjects over N seeds with each subject's recipe, validating every --curve_every
steps: the toy reader's scores and the learning signals at every validation. Then:

1. rank correlations (Spearman) of each signal with the reader's subject fidelity and ordinary-prompt accuracy,
   within runs (mean over seeds, 95 % CI) and pooled (bootstrap over runs);
2. stop rules replayed on the recorded curves (exact: validation does not change training), a grid on the
   circle; the training defaults checked on the circle and on the star without retuning.

Writes a dated section with the tables and a figure to docs/quality.md (``--docs`` to change).

    python benchmarks/study_signals.py --seeds 10 --workers 2            # train, then analyse
    python benchmarks/study_signals.py --reuse --output_dir DIR          # analyse saved results again
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

SUBJECT_EVERY = {"circle": 50, "star": 100}  # each recipe's validation interval (star: the default 100)


def collect(subject: str, args: argparse.Namespace) -> dict[str, Any]:
    from moslora_diffusion.yardstick.config import BenchConfig
    from moslora_diffusion.yardstick.runs import run_bench

    cfg = BenchConfig(seeds=args.seeds, method_names=("moslora",), curves=True, curve_every=args.curve_every,
                      subject=subject, images_per_prompt=1, output_dir=str(Path(args.output_dir) / subject))  # fmt: skip
    return run_bench(cfg, workers=args.workers)


def _fmt(pair: tuple[float, float], scale: float = 100, digits: int = 0) -> str:
    mean, half = pair
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(half) else f" ± {half * scale:.{digits}f}")


def correlation_table(results: dict[str, dict[str, Any]]) -> str:
    from moslora_diffusion.reporting import markdown_table
    from moslora_diffusion.training.signals import SIGNAL_NAMES
    from moslora_diffusion.yardstick.signals_study import DRIFT, FIDELITY, correlation, curve_rows

    rows = []
    for subject, result in results.items():
        runs = [[r for r in curve_rows(run, result["base"]) if r["step"] > 0] for run in result["runs"]]
        for signal in SIGNAL_NAMES:
            cells = [subject, f"`{signal}`"]
            for metric in (FIDELITY, DRIFT):
                c = correlation(runs, signal, metric)
                within = f"{c.within[0]:+.2f} ± {c.within[1]:.2f} ({c.within[2]})" if c.within[2] else "—"
                pooled = f"{c.pooled[0]:+.2f} [{c.pooled[1]:+.2f}, {c.pooled[2]:+.2f}]"
                cells += [within, pooled]
            rows.append(cells)
    headers = ["subject", "signal", "fidelity: within runs (n)", "fidelity: pooled [95 % CI]",
               "ordinary prompts: within runs (n)", "ordinary prompts: pooled [95 % CI]"]  # fmt: skip
    return markdown_table(headers, rows)


def _runs(result: dict[str, Any]) -> list[list[dict[str, float]]]:
    from moslora_diffusion.yardstick.signals_study import curve_rows

    return [curve_rows(run, result["base"]) for run in result["runs"]]


def _max_steps(result: dict[str, Any]) -> int:
    return max(r["step"] for run in _runs(result) for r in run)


def rule_row(subject: str, result: dict[str, Any], rule: Any, every: int) -> list[str]:
    from moslora_diffusion.yardstick.signals_study import replay_summary

    s = replay_summary(_runs(result), rule, every, _max_steps(result), result["base"]["base_drift_accuracy"])
    return [subject, f"{rule.patience} / {rule.min_improvement:g} / {rule.max_prompt_shift:g}", str(every),
            f"{_fmt(s['steps'], 1)} of {_max_steps(result)}", _fmt(s["fidelity"]), _fmt(s["below best"]),
            _fmt(s["drift"]), _fmt(s["fixed fidelity"]), _fmt(s["vs fixed"])]  # fmt: skip


RULE_HEADERS = ["subject", "patience / min. improvement / max. prompt shift", "validate every",
                "steps used", "fidelity kept %", "below the best validation (points)",
                "ordinary-prompt drift (points)", "fixed recipe's fidelity %", "kept − fixed (points)"]  # fmt: skip


def grid(result: dict[str, Any], every: int) -> list[Any]:
    from moslora_diffusion.training.stopping import StopRule
    from moslora_diffusion.yardstick.signals_study import replay_summary

    found = []
    for patience, gain in itertools.product((1, 2, 3), (0.02, 0.05, 0.1, 0.2)):
        rule = StopRule(patience, gain, StopRule().max_prompt_shift)
        s = replay_summary(
            _runs(result), rule, every, _max_steps(result), result["base"]["base_drift_accuracy"]
        )
        found.append((rule, s))
    return found


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moslora_diffusion.durable import write_figure
    from moslora_diffusion.yardstick.signals_study import FIDELITY

    fig, axes = plt.subplots(len(results), 3, figsize=(12, 3.3 * len(results)), squeeze=False)
    for row, (subject, result) in enumerate(results.items()):
        runs = _runs(result)
        fit_ax, shift_ax, scatter_ax = axes[row]
        for rows in runs:
            steps = [r["step"] for r in rows]
            fit_ax.plot(
                steps, [r["subject_fit"] / rows[0]["subject_fit"] for r in rows], color="tab:blue", alpha=0.4
            )
            fit_ax.plot(steps, [r[FIDELITY] for r in rows], color="tab:green", alpha=0.4)
            shift_ax.plot(steps, [r["prompt_shift"] for r in rows], color="tab:red", alpha=0.4)
            shift_ax.plot(steps, [r["binding"] for r in rows], color="tab:purple", alpha=0.4)
        fit_ax.set_title(f"{subject}: subject fit / step-0 fit (blue), fidelity (green)", fontsize=9)
        shift_ax.set_title(f"{subject}: prompt shift (red), binding (purple)", fontsize=9)
        points = [r for rows in runs for r in rows if r["step"] > 0]
        scatter_ax.scatter([r["subject_fit"] for r in points], [r[FIDELITY] for r in points], s=8, alpha=0.5)
        scatter_ax.set_xlabel("subject fit")
        scatter_ax.set_ylabel("subject fidelity")
        scatter_ax.set_title(f"{subject}: every validation of every seed", fontsize=9)
        for ax in (fit_ax, shift_ax):
            ax.set_xlabel("step")
    fig.tight_layout()
    return write_figure(path, fig)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    from moslora_diffusion.reporting import markdown_table
    from moslora_diffusion.training.args import TrainConfig
    from moslora_diffusion.training.stopping import StopRule

    default = StopRule.from_config(TrainConfig())
    lines = ["Rank correlation (Spearman) of each signal with the reader's scores at the same validations "
             "(validations after step 0). *Within runs*: over one run's validations, mean over seeds ± 95 % CI "
             "(runs where the score never changes are left out: n). *Pooled*: every validation of every seed, "
             "CI by resampling runs. A good fit signal correlates *negatively* with fidelity (lower loss, "
             "more subject).", "", correlation_table(results), ""]  # fmt: skip
    if "circle" in results:
        rows = [rule_row("circle", results["circle"], rule, SUBJECT_EVERY["circle"])
                for rule, _ in grid(results["circle"], SUBJECT_EVERY["circle"])]  # fmt: skip
        lines += ["Stop rules replayed on the circle (validations every 50 steps, as its recipe), means ± 95 % CI "
                  "over seeds; *fixed*: the 300-step recipe without the stop.", "",
                  markdown_table(RULE_HEADERS, rows), ""]  # fmt: skip
    rows = [
        rule_row(subject, result, default, SUBJECT_EVERY.get(subject, 100))
        for subject, result in results.items()
    ]
    lines += [f"The training defaults (patience {default.patience}, min. improvement {default.min_improvement:g}, "
              f"max. prompt shift {default.max_prompt_shift:g}) on each subject's recipe, not retuned:", "",
              markdown_table(RULE_HEADERS, rows), ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    from moslora_diffusion.quiet import quiet_entry_point

    quiet_entry_point()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--curve_every", type=int, default=25)
    parser.add_argument("--subjects", nargs="+", default=["circle", "star"])
    parser.add_argument("--output_dir", default="outputs/study_signals")
    parser.add_argument("--reuse", action="store_true", help="analyse the results saved in --output_dir")
    parser.add_argument("--docs", default=str(Path(__file__).resolve().parent.parent / "docs" / "quality.md"))
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for subject in args.subjects:
        saved = out / f"{subject}.json"
        if not args.reuse:
            saved.write_text(json.dumps(collect(subject, args), indent=1, default=str))
        results[subject] = json.loads(saved.read_text())
    text = report(results, args)
    print(text)
    docs = Path(args.docs)
    import datetime

    from moslora_diffusion.reporting import append_section

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    figure = plot(results, docs.parent / "images" / f"signals_study_{stamp}.png")
    seeds = {s: len(r["runs"]) for s, r in results.items()}
    body = (f"MoSLoRA on each subject's recipe, {seeds} seeds, validated every {args.curve_every} steps "
            f"(the toy reader: 8 subject and 12 ordinary-prompt images per validation; the signals: "
            f"`training/signals.py`).\n\n{text}\n![signals and fidelity](images/{figure.name})\n")  # fmt: skip
    append_section("Learning signals against the reader, and the stop when learnt", body, docs)


if __name__ == "__main__":
    main()
