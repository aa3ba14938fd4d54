"""The quick start's own clock, with and without `--stop_when_learned`, side by side.

Runs `moslora-diffusion quickstart` (the bundled circle, its 300-step recipe, validation every 50 steps with
the toy reader and sample images) for several seeds, alternating the two settings (ABBA), one run at a time,
and reads from each run's output: the training wall time (the trainer's summary line), the steps done, the
step kept, and the reader's scores at the end (the last validation's quality line). Prints a table and
appends it to docs/benchmarks.md.

    python benchmarks/bench_quickstart.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

SUMMARY = re.compile(r"^(finished|learnt): (\d+)/(\d+) steps in (\d+)s", re.MULTILINE)
QUALITY = re.compile(r"step (\d+): subject fidelity (\d+)%, prompt fidelity (\d+)%, ordinary prompts (\d+)%")


def run(seed: int, stop: bool, folder: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "moslora_diffusion.cli", "quickstart", "--seed", str(seed), "--output_dir",
           str(folder), "--overwrite_output_dir"] + (["--stop_when_learned"] if stop else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", **_env()})
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(text[-3000:])
    summary = SUMMARY.search(text)
    scores = {int(m.group(1)): m.groups()[1:] for m in QUALITY.finditer(text)}
    kept = summary.group(2)
    match = re.search(r"kept the adapter of step (\d+)", text)
    if match:
        kept = match.group(1)
    fidelity, _, ordinary = scores[int(kept)]
    return {"seconds": float(summary.group(4)), "steps": int(summary.group(2)), "kept": int(kept),
            "fidelity": float(fidelity), "ordinary": float(ordinary)}  # fmt: skip


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        for i, seed in enumerate(args.seeds):
            for stop in (False, True) if i % 2 == 0 else (True, False):
                results[stop].append(run(seed, stop, Path(tmp) / f"s{seed}-{int(stop)}"))
                print(seed, stop, results[stop][-1], flush=True)
    rows = []
    for stop in (False, True):
        r = results[stop]
        rows.append([
            "with --stop_when_learned" if stop else "fixed 300 steps",
            f"{statistics.mean(x['seconds'] for x in r):.1f}",
            " ".join(str(x["steps"]) for x in r), " ".join(str(x["kept"]) for x in r),
            " ".join(f"{x['fidelity']:.0f}" for x in r), " ".join(f"{x['ordinary']:.0f}" for x in r),
        ])  # fmt: skip
    ratio = statistics.mean(x["seconds"] for x in results[True]) / statistics.mean(
        x["seconds"] for x in results[False]
    )
    headers = ["quick start", "training wall time s (mean)", "steps done", "step kept",
               "subject fidelity % at the kept step", "ordinary prompts % at the kept step"]  # fmt: skip
    text = markdown_table(headers, rows) + f"\n\nWall-time ratio stop / fixed: {ratio:.2f}."
    print(text)
    if args.docs:
        body = (f"`moslora-diffusion quickstart` for seeds {args.seeds}, the two settings alternating, one run at a "
                "time; training wall time from the trainer's summary line (validations included), scores from the "
                f"validation (20 images) at the step kept.\n\n{text}\n")  # fmt: skip
        append_section("The quick start with and without the stop when learnt", body)


if __name__ == "__main__":
    main()
