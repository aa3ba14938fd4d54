"""Can validation sample with fewer steps without changing what it reports? And what does it cost?

Scores saved adapters (a yardstick study's output folder: every ``*/moslora_weights.safetensors``) with the
toy world's validation scorer (20 images) at several sampler step counts, paired adapter by adapter against
the toy model's default (25 DDIM steps): the mean difference of each score with its 95 % CI, the largest
single difference, and the seconds per validation at each count.

    python benchmarks/bench_validation.py --adapters outputs/study_signals/star --steps 25 15 10
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 15, 10])
    parser.add_argument(
        "--subject", default=None, help="bundled subject the adapters learnt (default: from the path)"
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()

    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline
    from moslora_diffusion.toyworld.quality import validation_scorer
    from moslora_diffusion.yardstick.stats import mean_ci95

    files = sorted(p for folder in args.adapters for p in Path(folder).rglob("moslora_weights.safetensors")
                   if "last" not in p.parts)  # fmt: skip
    pipe = load_toy_pipeline()
    scores: dict[int, list[dict[str, float]]] = {n: [] for n in args.steps}
    seconds: dict[int, list[float]] = {n: [] for n in args.steps}
    for i, path in enumerate(files):
        subject = args.subject or ("star" if "star" in str(path) else "circle")
        name = pipe.load_moslora_weights(str(path), adapter_name=f"a{i}")
        for n in args.steps:
            t0 = time.perf_counter()
            scores[n].append(validation_scorer(subject=subject, steps=n)(pipe))
            seconds[n].append(time.perf_counter() - t0)
        pipe.delete_adapters(name)
        print(f"{path}: " + "; ".join(f"{n} steps {scores[n][-1]}" for n in args.steps))
    ref = args.steps[0]
    rows = []
    for n in args.steps:
        cells = [str(n), f"{sum(seconds[n]) / len(seconds[n]):.2f}"]
        for key in scores[ref][0]:
            diffs = [b[key] - a[key] for a, b in zip(scores[ref], scores[n])]
            mean, half = mean_ci95(diffs) if len(diffs) > 1 else (diffs[0], float("nan"))
            cells.append(f"{100 * mean:+.1f} ± {100 * half:.1f} (max {100 * max(map(abs, diffs)):.0f})")
        rows.append(cells)
    headers = [
        "sampler steps",
        "s per validation",
        *[f"{k}: difference to {ref} steps, points" for k in scores[ref][0]],
    ]
    text = markdown_table(headers, rows)
    print(text)
    if args.docs:
        body = (
            f"The toy validation scorer (20 images) on {len(files)} saved adapters, each scored at every step "
            f"count with the same seeds; differences paired by adapter (mean ± 95 % CI, largest).\n\n{text}\n"
        )
        append_section("Validation with fewer sampler steps", body)


if __name__ == "__main__":
    main()
