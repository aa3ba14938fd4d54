"""benchmarks/bench_training.py on tiny pipelines: every configuration runs and the ratios match the times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_training.py"
DOCS = ROOT / "docs" / "benchmarks.md"
MODES = ("latents+text", "text", "none+TE")


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """Body rows of the markdown table whose header starts with `| first_header |`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


@pytest.mark.slow
def test_tiny_benchmark_table(tmp_path):
    docs_before = DOCS.read_text() if DOCS.exists() else None
    raw = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--no-docs",
            "--json",
            str(raw),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(raw.read_text())

    # one row per (cache mode, adapter), each with one timed step and a plausible peak RSS
    rows = table_rows(proc.stdout, "model")
    assert {(r["caches"], r["adapter"]) for r in rows} == {(m, a) for m in MODES for a in ("lora", "moslora")}
    assert len(rows) == 6
    by_key = {(r["mode"], r["adapter"]): r for r in results}
    for row in rows:
        res = by_key[(row["caches"], row["adapter"])]
        assert row["model"] == "sd1 32 px"
        assert len(res["step_times"]) == 1
        assert 0 < res["median"] < 30
        assert float(row["median s/step"]) == pytest.approx(res["median"], abs=1e-3)
        assert len(res["cpu_times"]) == 1 and res["cpu_median"] > 0
        assert float(row["median CPU s/step"]) == pytest.approx(res["cpu_median"], abs=1e-3)
        assert 100 < float(row["peak RSS MiB"]) < 8000  # the child's own peak, libraries included

    # the ratio table: moslora/lora per mode, cached/uncached per adapter, computed from the same medians
    ratios = {r["comparison"]: r for r in table_rows(proc.stdout, "model | comparison")}
    expected = {f"moslora / lora, caches {m}": (("moslora", m), ("lora", m)) for m in MODES}
    for m in MODES[1:]:
        for a in ("lora", "moslora"):
            expected[f"cached / uncached, latents+text / {m}, {a}"] = ((a, "latents+text"), (a, m))
    assert set(ratios) == set(expected)
    for name, ((a_adapter, a_mode), (b_adapter, b_mode)) in expected.items():
        a, b = by_key[(a_mode, a_adapter)], by_key[(b_mode, b_adapter)]
        assert float(ratios[name]["s/step ratio"]) == pytest.approx(a["median"] / b["median"], abs=1e-3)
        assert float(ratios[name]["CPU s/step ratio"]) == pytest.approx(
            a["cpu_median"] / b["cpu_median"], abs=1e-3
        )
        assert float(ratios[name]["peak RSS ratio"]) == pytest.approx(a["rss_mib"] / b["rss_mib"], abs=1e-3)

    # --no-docs leaves docs/benchmarks.md alone
    assert (DOCS.read_text() if DOCS.exists() else None) == docs_before


def test_precisions_are_compared_side_by_side_from_the_same_medians():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_training import Model, Result, tables

    def result(precision: str, adapter: str, seconds: float) -> Result:
        return Result(
            Model("sd1", 256, precision), "latents+text", adapter, [seconds], [seconds], 1000.0, None, 9.0
        )

    results = [result("no", "lora", 3.0), result("no", "moslora", 3.3), result("bf16", "lora", 1.5),
               result("bf16", "moslora", 2.2)]  # fmt: skip
    per_config, ratio_text = tables(results, cuda=False)
    assert [r["model"] for r in table_rows(per_config, "model")] == ["sd1 256 px"] * 2 + [
        "sd1 256 px, bf16"
    ] * 2
    ratios = {
        (r["model"], r["comparison"]): float(r["s/step ratio"]) for r in table_rows(ratio_text, "model")
    }
    assert ratios == pytest.approx({
        ("sd1 256 px", "moslora / lora, caches latents+text"): 1.1,
        ("sd1 256 px, bf16", "moslora / lora, caches latents+text"): 2.2 / 1.5,
        ("sd1 256 px, bf16", "bf16 / fp32, caches latents+text, lora"): 0.5,
        ("sd1 256 px, bf16", "bf16 / fp32, caches latents+text, moslora"): 2.2 / 3.3,
    }, abs=1e-3)  # fmt: skip
