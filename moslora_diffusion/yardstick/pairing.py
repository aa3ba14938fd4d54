"""Paired comparisons between toy-world studies: two `eval-toyworld` results matched seed by seed.

Within one study every method sees the same data order, noise, timesteps and sampling seeds per training
seed; so do two studies that score the same prompt panel (same subject, images per prompt and panel size),
whatever training flag separates them (mixer init, learning rate, targets). The differences per seed are
then the flag's, and their mean and 95% CI say more than two separate intervals would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import StudyError
from ..jsonio import read_json_file
from .config import METHOD_KEYS, METRIC_LABELS, METRICS, BenchConfig
from .stats import format_mean_ci

# What fixes the scored prompts and their sampling seeds: studies differing here cannot be paired.
PANEL_KEYS = ("subject", "images_per_prompt", "quick")


def load_study(path: str | Path) -> dict[str, Any]:
    """An `eval-toyworld` result from its output folder or its results.json (plain JSON, checked)."""
    p = Path(path)
    file = p / "results.json" if p.is_dir() else p
    if not file.is_file():
        raise StudyError(
            f"{file}: no such file (expected an eval-toyworld output folder or its results.json)"
        )
    study = read_json_file(file, StudyError, "not an eval-toyworld results.json")
    if not isinstance(study, dict):
        raise StudyError(f"{file}: not an eval-toyworld results.json (top level is not an object)")
    for key in ("runs", "methods", "config"):
        if key not in study:
            raise StudyError(f"{file}: not an eval-toyworld results.json (no {key!r})")
    methods, runs = study["methods"], study["runs"]
    if not isinstance(runs, list) or not isinstance(methods, list) or not methods:
        raise StudyError(f"{file}: not an eval-toyworld results.json ('runs' and 'methods' must be lists)")
    if not all(isinstance(m, str) for m in methods) or not isinstance(study["config"], dict):
        raise StudyError(f"{file}: 'methods' must hold names and 'config' must be an object")
    seen: set[tuple[str, int]] = set()
    for i, run in enumerate(runs):
        _check_run(file, i, run)
        if (run["method"], run["seed"]) in seen:
            raise StudyError(f"{file}: run {i}: {run['method']!r} at seed {run['seed']} appears twice")
        seen.add((run["method"], run["seed"]))
    study["_file"] = str(file)
    return study


def _check_run(file: Path, i: int, run: Any) -> None:
    """One run of a results.json: a method name, a seed (a whole number) and each metric a share in [0, 1]."""
    missing = [k for k in ("method", "seed", *METRICS) if not isinstance(run, dict) or k not in run]
    if missing:
        raise StudyError(f"{file}: run {i} has no {', '.join(map(repr, missing))}")
    if not isinstance(run["method"], str):
        raise StudyError(f"{file}: run {i}: 'method' is not a name")
    seed = run["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise StudyError(f"{file}: run {i}: 'seed' {seed!r} is not a whole number from 0 to 2**32 - 1")
    bad = [
        k
        for k in METRICS
        if isinstance(run[k], bool) or not isinstance(run[k], (int, float)) or not 0.0 <= run[k] <= 1.0
    ]
    if bad:
        raise StudyError(f"{file}: run {i}: {', '.join(map(repr, bad))} is not a number from 0 to 1")


def resolve_method(study: Mapping[str, Any], method: str | None) -> str:
    """A study's method label from a label ("LoRA r=16"), a key (moslora, lora, lora-2r at the study's
    rank) or None (the study's first method)."""
    methods = list(study["methods"])
    if method is None:
        return methods[0]
    if method in methods:
        return method
    rank = int(study["config"].get("rank", 8))
    labels = BenchConfig(rank=rank, method_names=METHOD_KEYS).methods()
    table = {key: label for key, (label, _, _) in zip(METHOD_KEYS, labels)}
    if table.get(method) in methods:
        return table[method]
    have = ", ".join(map(repr, methods))
    raise StudyError(f"{study.get('_file', 'study')}: no method {method!r}; it has {have}")


def per_seed(study: Mapping[str, Any], method: str) -> dict[int, Mapping[str, Any]]:
    """The study's runs of ``method`` by training seed."""
    return {int(r["seed"]): r for r in study["runs"] if r["method"] == method}


def paired_differences(
    a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]]
) -> tuple[list[int], dict[str, list[float]]]:
    """The seeds both sides ran and, per metric, the differences a − b at those seeds (fractions)."""
    seeds = sorted(set(a) & set(b))
    return seeds, {m: [float(a[s][m]) - float(b[s][m]) for s in seeds] for m in METRICS}


def panel_mismatch(cfg_a: Mapping[str, Any], cfg_b: Mapping[str, Any]) -> list[str]:
    """The prompt-panel settings (``PANEL_KEYS``) on which two study configs differ, as 'key: a vs b'."""
    defaults = BenchConfig().__dict__
    out = []
    for key in PANEL_KEYS:
        va, vb = cfg_a.get(key, defaults[key]), cfg_b.get(key, defaults[key])
        if va != vb:
            out.append(f"{key}: {va!r} vs {vb!r}")
    return out


def settings_difference(cfg_a: Mapping[str, Any], cfg_b: Mapping[str, Any]) -> list[str]:
    """What else separates two studies' training: rank, steps and every changed training flag."""
    out = []
    for key in ("rank", "max_train_steps"):
        if cfg_a.get(key) != cfg_b.get(key):
            out.append(f"--{key}: {cfg_a.get(key)} vs {cfg_b.get(key)}")
    xa, xb = dict(cfg_a.get("extra_train_args") or {}), dict(cfg_b.get("extra_train_args") or {})
    for key in sorted(set(xa) | set(xb)):
        if xa.get(key) != xb.get(key):
            out.append(f"--{key}: {xa.get(key, 'recipe')} vs {xb.get(key, 'recipe')}")
    return out


def compare_studies(
    study_a: Mapping[str, Any],
    study_b: Mapping[str, Any],
    method_a: str | None = None,
    method_b: str | None = None,
) -> dict[str, Any]:
    """Pair ``method_a`` of study A with ``method_b`` of study B by seed; raise `StudyError` when they cannot
    be paired (different prompt panel, no common seed, the same runs on both sides)."""
    label_a, label_b = resolve_method(study_a, method_a), resolve_method(study_b, method_b)
    file_a, file_b = study_a.get("_file"), study_b.get("_file")
    if label_a == label_b and file_a is not None and file_a == file_b:
        raise StudyError(f"{file_a}: comparing {label_a!r} with itself; name another method or study")
    mismatch = panel_mismatch(study_a["config"], study_b["config"])
    if mismatch:
        raise StudyError(
            f"{file_a} and {file_b} scored different prompt panels ({'; '.join(mismatch)}): "
            "their seeds cannot be paired"
        )
    runs_a, runs_b = per_seed(study_a, label_a), per_seed(study_b, label_b)
    seeds, diffs = paired_differences(runs_a, runs_b)
    if len(seeds) < 2:
        raise StudyError(
            f"{label_a!r} in {file_a} and {label_b!r} in {file_b} share {len(seeds)} seed(s); "
            "a paired interval needs at least 2"
        )
    return {
        "a": {
            "file": file_a,
            "method": label_a,
            "scores": {m: [float(runs_a[s][m]) for s in seeds] for m in METRICS},
        },
        "b": {
            "file": file_b,
            "method": label_b,
            "scores": {m: [float(runs_b[s][m]) for s in seeds] for m in METRICS},
        },
        "seeds": seeds,
        "differences": diffs,
        "settings": settings_difference(study_a["config"], study_b["config"]),
    }


def comparison_table(comparison: Mapping[str, Any]) -> str:
    """Markdown: each side's mean ± CI at the shared seeds and the paired difference A − B (points)."""
    a, b, seeds = comparison["a"], comparison["b"], comparison["seeds"]
    head = "| | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    rows = [head, "|" + "---|" * (len(METRICS) + 1)]
    for side, name in ((a, "A"), (b, "B")):
        cells = " | ".join(format_mean_ci(side["scores"][m]) for m in METRICS)
        rows.append(f"| {name}: {side['method']} | {cells} |")
    rows.append(
        f"| A − B, paired ({len(seeds)} seeds) | "
        + " | ".join(format_mean_ci(comparison["differences"][m]) for m in METRICS)
        + " |"
    )
    lines = [f"- A: {a['method']} in {a['file']}", f"- B: {b['method']} in {b['file']}"]
    if comparison["settings"]:
        lines.append("- Settings A vs B: " + "; ".join(comparison["settings"]))
    return "\n".join(lines) + "\n\n" + "\n".join(rows)


def run_cli(args: Any) -> int:
    """`moslora-diffusion compare-toyworld`: print the paired table; with ``--docs PATH`` append it to PATH."""
    import shlex
    import sys

    comparison = compare_studies(
        load_study(args.study_a), load_study(args.study_b), args.method_a, args.method_b
    )
    table = comparison_table(comparison)
    print(table)
    if getattr(args, "docs", None):
        from ..reporting import append_section

        command = "moslora-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        body = (
            "Two eval-toyworld studies paired by training seed (same data order, noise, timesteps and sampling "
            "seeds per seed; the same prompt panel). Percent of images, mean ± 95% CI over the shared seeds; "
            f"the difference from per-seed differences, in points.\n\n{table}\n"
        )
        append_section(
            "Toy-world paired comparison (compare-toyworld)",
            body,
            command=command,
            docs=Path(args.docs),
        )
    return 0
