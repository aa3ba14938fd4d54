"""The quick start's own clock, with and without `--stop_when_learned` (or other settings), side by side.

Runs `moslora-diffusion quickstart` (the bundled circle, its 300-step recipe, validation every 50 steps with
the toy reader and sample images) for several seeds, rotating the settings' order from seed to seed, one run
at a time, and reads from each run's output: the training wall time and the part of it spent validating (the
trainer's summary line), the steps done, the step kept, and the reader's scores at the end (the last
validation's quality line). Prints a table and appends it to docs/benchmarks.md.

    python benchmarks/bench_quickstart.py --seeds 0 1 2
    python benchmarks/bench_quickstart.py --seeds 0 1 2 --setting "validation every 100=--validation_steps 100"
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

SUMMARY = re.compile(
    r"^(finished|learnt): (\d+)/(\d+) steps in (\d+)s(?: \(validation ([\d.]+)s\))?", re.MULTILINE
)
DEFAULT_SETTINGS = {"fixed 300 steps": [], "with --stop_when_learned": ["--stop_when_learned"]}
QUALITY = re.compile(r"step (\d+): subject fidelity (\d+)%, prompt fidelity (\d+)%, ordinary prompts (\d+)%")


def run(seed: int, flags: list[str], folder: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "moslora_diffusion.cli", "quickstart", "--seed", str(seed), "--output_dir",
           str(folder), "--overwrite_output_dir", *flags]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", **_env(), **(env or {})}
    )
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
    return {"seconds": float(summary.group(4)), "validation": float(summary.group(5) or 0),
            "steps": int(summary.group(2)), "kept": int(kept),
            "fidelity": float(fidelity), "ordinary": float(ordinary)}  # fmt: skip


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", action="append", default=[], metavar="LABEL=FLAGS",
                        help="a further setting to compare, e.g. 'validation every 100=--validation_steps 100'")  # fmt: skip
    parser.add_argument("--env-setting", action="append", default=[], metavar="LABEL=NAME=VALUE[,NAME=VALUE]",
                        help="a further setting made by environment variables, e.g. "
                        "'libgomp default spin=GOMP_SPINCOUNT=300000'")  # fmt: skip
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args()
    settings = dict(DEFAULT_SETTINGS)
    envs: dict[str, dict[str, str]] = {}
    for item in args.setting:
        label, _, flags = item.partition("=")
        settings[label.strip()] = flags.split()
    for item in args.env_setting:
        label, _, assignments = item.partition("=")
        settings[label.strip()] = []
        envs[label.strip()] = dict(a.split("=", 1) for a in assignments.split(","))
    labels = list(settings)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        for i, seed in enumerate(args.seeds):
            for j in range(len(labels)):
                label = labels[(i + j) % len(labels)]  # each seed starts with the next setting
                results[label].append(
                    run(seed, settings[label], Path(tmp) / f"s{seed}-{labels.index(label)}", envs.get(label))
                )
                print(seed, label, results[label][-1], flush=True)
    rows = []
    base = statistics.mean(x["seconds"] for x in results[labels[0]])
    for label in labels:
        r = results[label]
        seconds = statistics.mean(x["seconds"] for x in r)
        validation = statistics.mean(x["validation"] for x in r)
        rows.append([
            label + (f" (`{' '.join(settings[label])}`)" if settings[label] else "")
            + (f" (`{' '.join(f'{k}={v}' for k, v in envs[label].items())}`)" if label in envs else ""),
            f"{seconds:.1f}", f"{validation:.1f} ({100 * validation / seconds:.0f} %)", f"{seconds / base:.2f}",
            " ".join(str(x["steps"]) for x in r), " ".join(str(x["kept"]) for x in r),
            " ".join(f"{x['fidelity']:.0f}" for x in r), " ".join(f"{x['ordinary']:.0f}" for x in r),
        ])  # fmt: skip
    headers = ["quick start", "training wall time s (mean)", "of it validation s (share)",
               f"time / {labels[0]}", "steps done", "step kept", "subject fidelity % at the kept step",
               "ordinary prompts % at the kept step"]  # fmt: skip
    text = markdown_table(headers, rows)
    print(text)
    if args.docs:
        body = (f"`moslora-diffusion quickstart` for seeds {args.seeds}, the settings in rotating order, one run at a "
                "time; training wall time from the trainer's summary line (validations included, and their share), "
                "scores from the "
                f"validation (20 images) at the step kept.\n\n{text}\n")  # fmt: skip
        append_section("The quick start with and without the stop when learnt", body)


if __name__ == "__main__":
    main()
