"""Can validation sample with fewer steps, or another sampler, without changing what it reports? At what cost?

Scores saved adapters (a yardstick study's output folder: every ``*/moslora_weights.safetensors``) with the
toy world's validation scorer (20 images) with several samplers, paired adapter by adapter against the first
(the toy model's default: 25 DDIM steps): the mean difference of each score with its 95 % CI, the largest
single difference, how many adapters' scores changed, and the seconds per validation. A sampler is ``STEPS``
(the model's own, DDIM) or ``NAME:STEPS`` with a sampler name of the web UI (``"DPM++ 2M:12"``).

    python benchmarks/bench_validation.py --adapters outputs/study_signals/star --samplers 25 15 10 "DPM++ 2M:12"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402


def main() -> None:
    from moslora_diffusion.quiet import quiet_entry_point

    quiet_entry_point()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", nargs="+", required=True, help="folders searched for adapters")
    parser.add_argument("--samplers", "--steps", nargs="+", default=["25", "15", "10"],
                        help="STEPS or NAME:STEPS, the first is the reference")  # fmt: skip
    parser.add_argument(
        "--subject", default=None, help="bundled subject the adapters learnt (default: from the path)"
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()
    from moslora_diffusion.sampling import SCHEDULERS, make_scheduler

    for label in args.samplers:
        name, _, n = label.rpartition(":")
        if (name and name not in SCHEDULERS) or not n.isdigit():
            parser.error(
                f"sampler {label!r}: give STEPS or NAME:STEPS with NAME one of {', '.join(SCHEDULERS)}"
            )
    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline
    from moslora_diffusion.toyworld.quality import validation_scorer
    from moslora_diffusion.yardstick.stats import mean_ci95

    files = sorted(p for folder in args.adapters for p in Path(folder).rglob("moslora_weights.safetensors")
                   if "last" not in p.parts)  # fmt: skip
    pipe = load_toy_pipeline()
    pipes, steps = {}, {}
    for label in args.samplers:
        name, _, n = label.rpartition(":")
        steps[label] = int(n)
        # a pipeline sharing the models, with its own scheduler (the model's own when no name is given)
        scheduler = make_scheduler(name, dict(pipe.scheduler.config)) if name else pipe.scheduler
        pipes[label] = type(pipe)(**{**pipe.components, "scheduler": scheduler})
        pipes[label].set_progress_bar_config(disable=True)
    scores: dict[str, list[dict[str, float]]] = {label: [] for label in args.samplers}
    seconds: dict[str, list[float]] = {label: [] for label in args.samplers}
    for i, path in enumerate(files):
        subject = args.subject or ("star" if "star" in str(path) else "circle")
        name = pipe.load_moslora_weights(str(path), adapter_name=f"a{i}")
        for label in args.samplers:
            t0 = time.perf_counter()
            scores[label].append(validation_scorer(subject=subject, steps=steps[label])(pipes[label]))
            seconds[label].append(time.perf_counter() - t0)
        pipe.delete_adapters(name)
        print(f"{path}: " + "; ".join(f"{label}: {scores[label][-1]}" for label in args.samplers), flush=True)
    ref = args.samplers[0]
    rows = []
    for label in args.samplers:
        cells = [label if ":" in label else f"DDIM:{label}", f"{statistics.mean(seconds[label]):.2f}"]
        for key in scores[ref][0]:
            diffs = [b[key] - a[key] for a, b in zip(scores[ref], scores[label])]
            mean, half = mean_ci95(diffs) if len(diffs) > 1 else (diffs[0], float("nan"))
            changed = sum(d != 0 for d in diffs)
            cells.append(f"{100 * mean:+.1f} ± {100 * half:.1f} (max {100 * max(map(abs, diffs)):.0f}; "
                         f"{changed} of {len(diffs)} changed)")  # fmt: skip
        rows.append(cells)
    headers = [
        "sampler: steps",
        "s per validation",
        *[f"{k}: difference to {ref}, points" for k in scores[ref][0]],
    ]
    text = markdown_table(headers, rows)
    print(text)
    if args.docs:
        body = (
            f"The toy validation scorer (20 images) on {len(files)} saved adapters, each scored with every "
            f"sampler and the same seeds; differences paired by adapter (mean ± 95 % CI, largest, how many "
            f"adapters' scores changed).\n\n{text}\n"
        )
        append_section("Validation with fewer sampler steps or another sampler", body)


if __name__ == "__main__":
    main()
