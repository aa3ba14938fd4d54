"""Our DreamBooth script against diffusers' own `train_dreambooth_lora.py` — and kohya-ss/sd-scripts'
`train_network.py` — on the same job, side by side.

Each script runs as its own process, one at a time, at two step counts. Each run is split at its first
step (the scripts' own progress bars): the start-up up to it, then the steps and the finish. The cost per step
is the slope of the time after the first step between the two counts, so start-up noise stays out of it.
Reported per job and script: time to the first step, seconds per step (fitted), the finish (fitted), a whole
500-step run (fitted from the two, not measured), peak RSS, and the ratios of the reference to ours. The table is appended to docs/benchmarks.md with command, machine and date.

The same job for both: the same images and instance prompt, rank 4, UNet attention projections
(to_q/k/v/out.0), batch 1, fp32, learning rate 1e-4 constant, seed 0, no validation, no checkpoints, no
prior preservation. Jobs: the bundled toy-world model (32 px, 6 images) and the SD 1.5 architecture with
random weights built offline (256 px, 6 images).

diffusers' script is not part of the pip package and needs torchvision: take it from a diffusers checkout
matching the installed version (never copy it into this repository), and run in a venv that has both:

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1   # from this machine's local disk
    /tmp/refvenv/bin/pip install -e ".[train]"
    /tmp/refvenv/bin/python benchmarks/bench_vs_diffusers.py \\
        --reference-script /path/to/diffusers/examples/dreambooth/train_dreambooth_lora.py

kohya-ss/sd-scripts (optional, `--kohya-dir`): a checkout of its repository (never copied here) with its own
venv from its own requirements, and its tokenizer offline through `--tokenizer_cache_dir` (the job's tokenizer
is put where it looks: `<cache>/openai_clip-vit-large-patch14`):

    git clone https://github.com/kohya-ss/sd-scripts /tmp/sd-scripts
    python -m venv /tmp/kohyavenv
    /tmp/kohyavenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    (cd /tmp/sd-scripts && /tmp/kohyavenv/bin/pip install -r requirements.txt)
    python benchmarks/bench_vs_diffusers.py --reference-script ... --kohya-dir /tmp/sd-scripts \
        --kohya-python /tmp/kohyavenv/bin/python

The kohya job is its own default LoRA (`networks.lora`: every Linear and 1x1 conv of the UNet's transformer
blocks, 192 modules on SD 1.5; UNet only), rank 4, alpha 4, AdamW, constant lr 1e-4, fp32, `--cache_latents`,
`--sdpa`, batch 1, the same images with the instance prompt as `class_tokens` of a dataset file, no samples, no
saving until the end, `--max_data_loader_n_workers 0` (its default, 8, spawns workers every epoch: slower here);
ours runs the same module set (`ours-*-kohya-set`), with its latent and text caches as always.

On a GPU: add `--device cuda` (SD 1.5 at 512 px, and with `--jobs sd1,sdxl --reference-script-sdxl
.../train_dreambooth_lora_sdxl.py` SDXL at 1024 px; `--mixed-precision bf16` (default) or `fp16`; the toy job
is skipped). Peak GPU memory is then read for both scripts the same way: the process's memory as `nvidia-smi`
reports it, polled every 0.2 s (the allocator's reserve included). `benchmarks/gpu_check.sh` runs all of it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_section, markdown_table  # noqa: E402

OUR_SCRIPT = REPO / "train_scripts" / "train_dreambooth_moslora.py"
INSTANCE_PROMPT = "a photo of sks toy"
N_IMAGES = 6
# The first progress-bar update of each script: "Steps: ... 1/N" (diffusers), "steps: ... 1/N" (kohya) and
# "training: ... 1/N" (ours).
FIRST_STEP = {
    "reference": re.compile(r"Steps:.*?\b1/\d+"),
    "kohya": re.compile(r"steps:.*?\b1/\d+"),
    "ours": re.compile(r"training:.*?\b1/\d+"),
}
SCRIPTS = ("reference", "ours-lora", "ours-moslora")
KOHYA_SCRIPTS = ("kohya", "ours-lora-kohya-set", "ours-moslora-kohya-set")
# kohya-ss's default LoRA module set on the SD 1.x UNet: every Linear / 1x1 conv inside the transformer blocks
KOHYA_UNET_TARGETS = ("proj_in,proj_out,attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0,attn2.to_q,attn2.to_k,"
                      "attn2.to_v,attn2.to_out.0,ff.net.0.proj,ff.net.2")  # fmt: skip
KOHYA_TOKENIZER = "openai_clip-vit-large-patch14"  # where its --tokenizer_cache_dir looks for SD 1.x


@dataclass(frozen=True)
class Job:
    name: str
    resolution: int
    steps: tuple[int, int]
    mixed_precision: str = "no"

    @property
    def label(self) -> str:
        return f"{self.name} {self.resolution} px" + (
            f" {self.mixed_precision}" if self.mixed_precision != "no" else ""
        )


@dataclass
class Run:
    job: str
    script: str
    steps: int
    wall_s: float
    first_step_s: float | None
    rss_mib: float
    gpu_mib: float | None = None


# ----------------------------------------------------------------------------- the job's inputs


def prepare_job(job: Job, work: Path) -> tuple[Path, Path]:
    """(model folder, image folder) for the job."""
    from bench_training import Model, build_model_dir, make_instance_images

    images = work / f"{job.name}-images"
    if job.name == "toy":
        from moslora_diffusion import toyworld

        images.mkdir(parents=True, exist_ok=True)
        for png in sorted(toyworld.subject_path().glob("*.png"))[:N_IMAGES]:
            shutil.copy(png, images / png.name)  # images only: both scripts use the same instance prompt
        return toyworld.base_model_path(), images
    model_dir = work / f"{job.name}-model"
    if not (model_dir / "model_index.json").is_file():
        print(f"building the {job.name} architecture with random weights in {model_dir} ...", flush=True)
        build_model_dir(Model(job.name, job.resolution), False, "float32", str(model_dir))
    make_instance_images(images, job.resolution, N_IMAGES)
    return model_dir, images


def kohya_command(python: str, kohya_dir: Path, model: Path, images: Path, out: Path, job: Job, steps: int) -> list[str]:  # fmt: skip
    """kohya-ss's train_network.py on the job (its dataset file and tokenizer cache written into ``out``'s parent)."""
    work = out.parent
    toml = work / f"kohya-{job.name}.toml"
    toml.write_text(
        f'[general]\ncaption_extension = ".none"\n[[datasets]]\nresolution = {job.resolution}\nbatch_size = 1\n'
        f'  [[datasets.subsets]]\n  image_dir = "{images}"\n  class_tokens = "{INSTANCE_PROMPT}"\n'
    )
    cache = work / "kohya-tokenizer"
    if not (
        cache / KOHYA_TOKENIZER
    ).is_dir():  # the job's own tokenizer, in the files its slow CLIPTokenizer reads
        import json

        target = cache / KOHYA_TOKENIZER
        target.mkdir(parents=True)
        for name in ("vocab.json", "merges.txt"):
            found = next(
                p
                for p in (model / "tokenizer" / name, model.parent / f"tokenizer-{job.name}" / name)
                if p.is_file()
            )
            shutil.copy(found, target / name)
        config = json.loads((model / "tokenizer" / "tokenizer_config.json").read_text())
        keep = ("model_max_length", "pad_token", "bos_token", "eos_token", "unk_token")
        (target / "tokenizer_config.json").write_text(json.dumps({k: config[k] for k in keep if k in config}))
    return [python, str(kohya_dir / "train_network.py"), "--pretrained_model_name_or_path", str(model),
            "--dataset_config", str(toml), "--output_dir", str(out), "--output_name", "lora",
            "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "4",
            "--network_train_unet_only", "--learning_rate", "1e-4", "--lr_scheduler", "constant",
            "--optimizer_type", "AdamW", "--max_train_steps", str(steps), "--mixed_precision", job.mixed_precision,
            "--save_precision", "float", "--seed", "0", "--cache_latents", "--sdpa",
            "--tokenizer_cache_dir", str(cache), "--max_data_loader_n_workers", "0"]  # fmt: skip


def command(script: str, python: str, reference: Path, model: Path, images: Path, out: Path, job: Job, steps: int) -> list[str]:  # fmt: skip
    common = [
        "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
        "--instance_prompt", INSTANCE_PROMPT, "--output_dir", str(out), "--resolution", str(job.resolution),
        "--train_batch_size", "1", "--learning_rate", "1e-4", "--lr_scheduler", "constant",
        "--max_train_steps", str(steps), "--rank", "4", "--seed", "0", "--mixed_precision", job.mixed_precision,
    ]  # fmt: skip
    if script == "reference":
        return [
            python,
            str(reference),
            *common,
            "--checkpointing_steps",
            str(10**6),
            "--report_to",
            "tensorboard",
        ]
    adapter = script.removeprefix("ours-").removesuffix("-kohya-set")
    targets = KOHYA_UNET_TARGETS if script.endswith("-kohya-set") else "attn"
    # --no-signals: the job has no validation on any side (the signals, on by default, are measured at every
    # validation and at the end: docs/benchmarks.md has their cost)
    return [python, str(OUR_SCRIPT), *common, "--adapter", adapter, "--unet_targets", targets,
            "--checkpointing_steps", "0", "--overwrite_output_dir", "--no-signals"]  # fmt: skip


# ----------------------------------------------------------------------------- one timed process


class GpuMemoryPoll:
    """Peak GPU memory of one process (and its children) from `nvidia-smi`, polled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        import threading

        self.pid, self.interval, self.peak_mib = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pids(self) -> set[int]:
        pids, frontier = {self.pid}, [self.pid]
        while frontier:  # accelerate launch starts the training process as a child
            try:
                children = Path(f"/proc/{frontier.pop()}/task").glob("*/children")
                for f in children:
                    new = {int(c) for c in f.read_text().split()} - pids
                    pids |= new
                    frontier += new
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=10,
                ).stdout  # fmt: skip
            except (OSError, subprocess.TimeoutExpired):
                continue
            pids = self._pids()
            used = sum(float(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line) if int(p) in pids)  # fmt: skip
            self.peak_mib = max(self.peak_mib, used)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def timed_run(cmd: list[str], env: dict[str, str], first_step: re.Pattern, log: Path, gpu: bool = False) -> tuple[float, float | None, float, float | None]:  # fmt: skip
    """(wall seconds, seconds to the first step or None, peak RSS MiB, peak GPU MiB or None) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
    poll = GpuMemoryPoll(proc.pid) if gpu else None
    first, buffer = None, ""
    with log.open("wb") as sink:
        while chunk := os.read(proc.stderr.fileno(), 65536):
            sink.write(chunk)
            if first is None:
                buffer = (buffer + chunk.decode(errors="replace"))[-4096:]
                if any(first_step.search(part) for part in re.split(r"[\r\n]", buffer)):
                    first = time.perf_counter() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    gpu_mib = poll.stop() if poll is not None else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}; log: {log}")
    return wall, first, usage.ru_maxrss / 1024, gpu_mib


# ----------------------------------------------------------------------------- tables


def fit(runs: list[Run]) -> tuple[float, float]:
    """(seconds per step, seconds after the last step) from runs at two step counts (medians per count).

    Each run is split at its first step: a run of n steps = start-up to the first step + (n - 1) steps + the
    finish (writing the adapter, exiting). The slope is fitted to the part after the first step only, so a
    start-up that varies from run to run (a cold disk cache, a slow import) does not leak into it."""
    by_steps: dict[int, list[float]] = {}
    for r in runs:
        after_first = r.wall_s - r.first_step_s if r.first_step_s is not None else r.wall_s
        by_steps.setdefault(r.steps, []).append(after_first)
    (n1, w1), (n2, w2) = sorted((n, statistics.median(w)) for n, w in by_steps.items())
    slope = (w2 - w1) / (n2 - n1)
    return slope, w1 - slope * (n1 - 1)


def warm_page_cache(*folders: Path) -> None:
    """Read every file once, so that whichever script runs first does not pay for a cold disk cache."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                with path.open("rb") as fh:
                    while fh.read(1 << 24):
                        pass


def tables(runs: list[Run], jobs: list[Job]) -> str:
    rows, ratio_rows = [], []
    pairs = [
        ("reference", ("ours-lora", "ours-moslora")),
        ("kohya", ("ours-lora-kohya-set", "ours-moslora-kohya-set")),
    ]
    for job in jobs:
        stats = {}
        for script in (*SCRIPTS, *KOHYA_SCRIPTS):
            mine = [r for r in runs if r.job == job.name and r.script == script]
            if not mine:
                continue
            per_step, fixed = fit(mine)
            firsts = [r.first_step_s for r in mine if r.first_step_s is not None]
            stats[script] = {
                "first": statistics.median(firsts) if firsts else float("nan"),
                "per_step": per_step,
                "fixed": fixed,
                "run500": (statistics.median(firsts) if firsts else 0.0) + 499 * per_step + fixed,
                "rss": max(r.rss_mib for r in mine),
                "gpu": max((r.gpu_mib or 0.0) for r in mine),
            }
            s = stats[script]
            rows.append([job.label, script, f"{s['first']:.1f}", f"{per_step:.3f}",
                         f"{fixed:.1f}", f"{s['run500']:.0f}", f"{s['rss']:.0f}", f"{s['gpu']:.0f}" if s["gpu"] else "-"])  # fmt: skip
        for ref_name, ours in pairs:
            ref = stats.get(ref_name)
            for script in ours:
                if not (ref and script in stats):
                    continue
                s = stats[script]
                ratio_rows.append([job.label, f"{ref_name} / {script}",
                                   f"{ref['first'] / s['first']:.2f}", f"{ref['per_step'] / s['per_step']:.2f}",
                                   f"{ref['run500'] / s['run500']:.2f}", f"{s['rss'] / ref['rss']:.2f}",
                                   f"{s['gpu'] / ref['gpu']:.2f}" if s["gpu"] and ref["gpu"] else "-"])  # fmt: skip
    head = ["job", "script", "first step s", "s/step (fitted)", "finish s (fitted)", "500 steps s (fitted)", "peak RSS MiB", "peak GPU MiB"]  # fmt: skip
    text = markdown_table(head, rows)
    if ratio_rows:
        text += "\n\nHow many times faster ours is (reference / ours; above 1 = ours faster), and our memory relative to the reference:\n\n"
        text += markdown_table(["job", "comparison", "first step", "per step", "500-step run", "peak RSS ours/ref", "peak GPU ours/ref"], ratio_rows)  # fmt: skip
    return text


# ----------------------------------------------------------------------------- main


def _git_commit(folder: Path) -> str:
    """The checkout's commit (short), or "commit unknown" when it is no git checkout."""
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"{folder} (no git checkout: commit unknown)"


def _interpreter_versions(python: str) -> str:
    """torch and diffusers of the venv the scripts ran in (the harness's own may differ)."""
    code = "import torch, diffusers; print(f'torch {torch.__version__}, diffusers {diffusers.__version__}')"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "versions unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    ap.add_argument(
        "--reference-script",
        required=True,
        type=Path,
        help="diffusers' examples/dreambooth/train_dreambooth_lora.py",
    )
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the venv with torchvision (default: this one)",
    )
    ap.add_argument(
        "--reference-script-sdxl",
        type=Path,
        default=None,
        help="diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py (for the sdxl job)",
    )
    ap.add_argument("--jobs", default="toy,sd1", help="comma-separated: toy, sd1, sdxl (sdxl: CUDA only)")
    ap.add_argument(
        "--mixed-precision", default="bf16", choices=("bf16", "fp16"), help="on CUDA (CPU runs are fp32)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per process on CPU (one run at a time)"
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs per script and step count (medians are fitted)"
    )
    ap.add_argument("--steps", default=None, help="override the jobs' two step counts, e.g. 3,11")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="models, images, outputs and logs (default: a temp folder)",
    )
    ap.add_argument(
        "--kohya-dir",
        type=Path,
        default=None,
        help="a kohya-ss/sd-scripts checkout: adds its train_network.py",
    )
    ap.add_argument("--kohya-python", default=None, help="the interpreter of kohya's own venv")
    ap.add_argument(
        "--scripts", default=None, help="comma-separated subset of the scripts to run (default: all)"
    )
    ap.add_argument("--no-docs", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args(argv)  # fmt: skip
    if not args.reference_script.is_file():
        sys.exit(f"{args.reference_script}: no such file (take it from a diffusers checkout)")

    cuda = args.device == "cuda"
    mp = args.mixed_precision
    all_jobs = {
        "toy": Job("toy", 32, (20, 200)),
        "sd1": Job("sd1", 512, (5, 25), mp) if cuda else Job("sd1", 256, (3, 11)),
        "sdxl": Job("sdxl", 1024, (5, 25), mp),
    }
    names = [n.strip() for n in args.jobs.split(",") if n.strip()]
    if set(names) - set(all_jobs):
        sys.exit(f"--jobs: choose from {', '.join(all_jobs)}")
    if "sdxl" in names and not (cuda and args.reference_script_sdxl and args.reference_script_sdxl.is_file()):
        sys.exit(
            "the sdxl job needs --device cuda and --reference-script-sdxl (train_dreambooth_lora_sdxl.py)"
        )
    jobs = [all_jobs[name] for name in names if not (cuda and name == "toy")]
    if args.steps:
        low, high = (int(n) for n in args.steps.split(","))
        jobs = [Job(j.name, j.resolution, (low, high), j.mixed_precision) for j in jobs]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-vs-diffusers-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if not cuda:
        env.update(
            OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES=""
        )
    runs: list[Run] = []
    for job in jobs:
        model, images = prepare_job(job, work)
        warm_page_cache(model, images)
        # kohya's own UNet class is built for the real SD layouts: not for the toy model's
        order = list(SCRIPTS) + (list(KOHYA_SCRIPTS) if args.kohya_dir and job.name != "toy" else [])
        if args.scripts:
            order = [name for name in order if name in args.scripts.split(",")]
        for rep in range(args.repeats):
            for steps in job.steps:
                for script in order:
                    out = work / f"out-{job.name}-{script}-{steps}-{rep}"
                    shutil.rmtree(out, ignore_errors=True)
                    reference = args.reference_script_sdxl if job.name == "sdxl" else args.reference_script
                    if script == "kohya":
                        cmd = kohya_command(
                            args.kohya_python or args.python, args.kohya_dir, model, images, out, job, steps
                        )
                    else:
                        cmd = command(script, args.python, reference, model, images, out, job, steps)
                    pattern = FIRST_STEP[script if script in FIRST_STEP else "ours"]
                    wall, first, rss, gpu = timed_run(cmd, env, pattern, work / f"{out.name}.log", gpu=cuda)
                    runs.append(Run(job.name, script, steps, wall, first, rss, gpu))
                    print(f"{job.name} {script} {steps} steps: {wall:.1f} s, first step at {first} s, {rss:.0f} MiB", flush=True)  # fmt: skip
                    shutil.rmtree(out, ignore_errors=True)
                order.reverse()  # alternate who runs first
    threads = "GPU" if cuda else f"{args.threads} torch thread(s) per process, one process at a time"
    body = (
        f"Each script a separate process ({threads}); step counts per job: "
        + ", ".join(f"{j.name} {j.steps[0]} and {j.steps[1]}" for j in jobs)
        + f"; {args.repeats} run(s) each. `first step` is when the script's progress bar first shows step 1 "
        "(start-up included); `s/step` and `finish` (after the last step: saving, exiting) are fitted from the time "
        "after the first step at the two step counts, so start-up noise stays out of the slope; `500 steps` = first "
        "step + 499 × s/step + finish (fitted, not measured). The model files are read once before timing (page "
        "cache warm for every script). Same job for both: rank 4, attention targets, batch 1, lr 1e-4 constant, seed 0, no validation, "
        f"no checkpoints; {mp if cuda else 'fp32'}."
        + (
            " kohya's `train_network.py` against ours on its own default module set (`*-kohya-set`: the UNet's "
            "transformer blocks, 192 modules on SD 1.5), with `--cache_latents --sdpa`, rank 4, alpha 4, AdamW."
            if args.kohya_dir
            else ""
        )
        + "\n\n"
        + tables(runs, jobs)
    )
    print(body)
    if not args.no_docs:
        versions = (f"the scripts' venv ({args.python}): {_interpreter_versions(args.python)}; reference script "
                    f"{args.reference_script.name}")  # fmt: skip
        if args.kohya_dir:
            versions += (f"; kohya-ss/sd-scripts {_git_commit(args.kohya_dir)} in its venv: "
                         f"{_interpreter_versions(args.kohya_python or args.python)}")  # fmt: skip
        append_section("DreamBooth start-up and speed: ours vs diffusers' train_dreambooth_lora.py", body + f"\n\n({versions})", device=args.device)  # fmt: skip


if __name__ == "__main__":
    main()
