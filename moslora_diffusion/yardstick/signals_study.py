"""Do the learning signals track quality? Rank correlations against the toy reader, and stop rules replayed.

Input: yardstick results whose runs carry learning curves with signals (``eval-toyworld`` with curves; each
curve point has the reader's scores and ``signal:<name>`` values measured at the same validation). Because
training does not depend on what a validation measures, a stop rule replayed on a recorded curve stops where
a real run with ``--stop_when_learned`` would, with the same adapter.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..training.signals import SIGNAL_NAMES
from ..training.stopping import StopRule
from .stats import mean_ci95

FIDELITY, DRIFT = "subject fidelity", "ordinary prompts"


def curve_rows(run: dict[str, Any], base: dict[str, float]) -> list[dict[str, float]]:
    """A run's signal history (step 0 and every validation) joined with the reader's scores at the same
    steps; step 0 is the untrained adapter, i.e. the base model's scores ``base``."""
    scores = {p["step"]: p for p in run.get("curve") or []}
    scores[0] = {FIDELITY: base["subject_fidelity"], DRIFT: base["base_drift_accuracy"]}
    return [
        {"step": row["step"], FIDELITY: scores[row["step"]][FIDELITY], DRIFT: scores[row["step"]][DRIFT],
         **{k: row.get(k, math.nan) for k in SIGNAL_NAMES}}
        for row in run.get("signals") or []
        if row["step"] in scores
    ]  # fmt: skip


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return math.nan
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


@dataclass
class Correlation:
    within: tuple[float, float, int]  # mean of per-run rho, 95 % CI half-width, runs with a defined rho
    pooled: tuple[float, float, float]  # rho over every validation of every run, bootstrap 95 % CI (runs)


def correlation(
    runs: list[list[dict[str, float]]], signal: str, metric: str, boot: int = 2000
) -> Correlation:
    """How ``signal`` ranks with ``metric``: within each run (over its validations) and pooled."""
    per_run = [spearman([r[signal] for r in rows], [r[metric] for r in rows]) for rows in runs]
    defined = [v for v in per_run if math.isfinite(v)]
    within = (*mean_ci95(defined), len(defined)) if defined else (math.nan, math.nan, 0)

    def pooled_rho(sample: list[list[dict[str, float]]]) -> float:
        rows = [r for rows in sample for r in rows]
        return spearman([r[signal] for r in rows], [r[metric] for r in rows])

    rho = pooled_rho(runs)
    rng = random.Random(0)
    draws = sorted(
        v for v in (pooled_rho([rng.choice(runs) for _ in runs]) for _ in range(boot)) if math.isfinite(v)
    )
    lo, hi = (
        (draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]) if draws else (math.nan,) * 2
    )
    return Correlation(within, (rho, lo, hi))


def replay(rows: list[dict[str, float]], rule: StopRule, every: int, max_steps: int) -> dict[str, float]:
    """Where ``rule`` stops a run validated every ``every`` steps, and the reader's scores of what it keeps."""
    history = [r for r in rows if r["step"] % every == 0 or r["step"] == max_steps]
    seen: list[dict[str, float]] = []
    for row in history:
        seen.append(row)
        if row["step"] > 0 and (rule.reason(seen) or row["step"] >= max_steps):
            break
    kept = rule.best(seen) or seen[-1]
    scored = [r for r in rows if r["step"] > 0]
    return {
        "stop": seen[-1]["step"],
        "kept": kept["step"],
        FIDELITY: kept[FIDELITY],
        DRIFT: kept[DRIFT],
        "best fidelity": max(r[FIDELITY] for r in scored),
        "final fidelity": scored[-1][FIDELITY],
        "final drift": scored[-1][DRIFT],
    }


def replay_summary(
    runs: list[list[dict[str, float]]], rule: StopRule, every: int, max_steps: int, base_drift: float
) -> dict[str, Any]:
    """Means with 95 % CIs over runs of a replayed rule: steps used, fidelity kept vs the best, drift."""
    outcomes = [replay(rows, rule, every, max_steps) for rows in runs]

    def stat(values: list[float]) -> tuple[float, float]:
        return mean_ci95(values)

    return {
        "rule": rule,
        "every": every,
        "steps": stat([o["stop"] for o in outcomes]),
        "share of steps": stat([o["stop"] / max_steps for o in outcomes]),
        "fidelity": stat([o[FIDELITY] for o in outcomes]),
        "below best": stat([o["best fidelity"] - o[FIDELITY] for o in outcomes]),
        "drift": stat([base_drift - o[DRIFT] for o in outcomes]),
        "fixed fidelity": stat([o["final fidelity"] for o in outcomes]),
        "fixed drift": stat([base_drift - o["final drift"] for o in outcomes]),
        "vs fixed": stat([o[FIDELITY] - o["final fidelity"] for o in outcomes]),
        "outcomes": outcomes,
    }
