"""Which run an output folder belongs to, and what may be written into it.

A run's *fingerprint* covers everything that changes the trained weights: the base model, every setting that
enters training (seed, data order, learning rate, adapter, targets, …) and a digest of the instance images and
captions. It is written to ``run.json`` when a run starts and into every checkpoint. Then:

- a folder holding another run's checkpoints or adapter files is refused unless ``--overwrite_output_dir``
  (which clears them first) or ``--resume_from_checkpoint`` with a matching fingerprint says so;
- ``latest`` resumes the newest *intact* checkpoint, naming the damaged ones it skips;
- a start-up removes the hidden leftovers an interrupted run leaves (temporary checkpoint folders and files).

Settings that only change what is *reported* (validation, logging, checkpoint frequency, exports) and the
length of the run (``--max_train_steps`` / ``--num_train_epochs``, so a finished run can be extended by
resuming) are not part of the fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..constants import DIFFUSERS_WEIGHTS_NAME, KOHYA_WEIGHTS_NAME, MOSLORA_WEIGHTS_NAME
from ..durable import write_atomic
from ..errors import TrainConfigError
from ..reproducible import math_settings
from . import checkpoint as ckpt
from .args import TrainConfig
from .dataset_config import data_plan, subset_images

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
LOCK_NAME = ".moslora-run.lock"
ADAPTER_FILES = (MOSLORA_WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME, KOHYA_WEIGHTS_NAME)
# With --stop_when_learned the run folder's adapter is the best validation's; the last step's goes here.
LAST_ADAPTER_DIR = "last"
# Settings that do not change the trained weights (see the module docstring).
NOT_FINGERPRINTED = frozenset(
    {
        "output_dir",
        "logging_dir",
        "report_to",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "validation_prompt",
        "num_validation_images",
        "validation_steps",
        "validation_inference_steps",
        "validation_guidance_scale",
        "merged_validation",
        "export_kohya",
        "max_train_steps",
        "num_train_epochs",
        "signals",
        "signal_prompts",
        "stop_when_learned",  # where a run ends, not what a step does: a run may be resumed with the stop
        "stop_patience",
        "stop_min_improvement",
        "stop_max_prompt_shift",
        "seed",  # compared apart: an unset seed means "the run's own" when resuming
        "pretrained_model_name_or_path",  # compared resolved, below
        "pretrained_vae_model_name_or_path",
    }
)


def resolved_path(name: str | None) -> str | None:
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def data_digest(cfg: TrainConfig) -> str:
    """SHA-256 over the instance images (name and bytes) and their captions, in file order; with a dataset file,
    over every subset's images and captions and the subsets' settings.

    Computed once per state of the files (preflight and the trainer both ask for it).
    """
    plan = data_plan(cfg)
    digests = []
    for subset in plan.subsets:
        if subset.is_reg and plan.source is None:
            continue  # the command line's class images were never part of the fingerprint
        images = subset_images(plan, subset)
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in images.paths)
        digests.append(_digest(stats, tuple(c or "" for c in images.captions)))
    if plan.source is None:
        return digests[0]
    return hashlib.sha256("".join([*digests, plan.describe()]).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...], captions: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for (path, _, _), caption in zip(files, captions):
        h.update(Path(path).name.encode())
        h.update(Path(path).read_bytes())
        h.update(caption.encode())
    return h.hexdigest()


def _file_size(name: str | None) -> int | None:
    """Size of a single-file base model (a replaced file of the same name is another model); None otherwise."""
    p = Path(name).expanduser() if name else None
    return p.stat().st_size if p is not None and p.is_file() else None


def fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """Everything that changes the trained weights, except the seed (see :func:`seed_mismatch`)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    return {
        "base_model": resolved_path(cfg.pretrained_model_name_or_path),
        "base_model_bytes": _file_size(cfg.pretrained_model_name_or_path),
        "vae": resolved_path(cfg.pretrained_vae_model_name_or_path),
        "settings": settings,
        "instance_data": data_digest(cfg),
    }


def _difference(found: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> str | None:
    """What differs between a recorded fingerprint and this run's, or None when they match.

    A setting (or top-level entry) that an older version did not record matches when this run leaves it at
    its default: adding a flag must not make earlier runs impossible to resume.
    """
    if found == expected:
        return None
    if not isinstance(found, Mapping):
        return "no fingerprint (written by an older version)"
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    diffs = []
    for key, value in expected.items():
        if key not in found and value is None:
            continue
        other = found.get(key)
        if key == "settings" and isinstance(other, Mapping):
            diffs += [
                f"--{k}: {other.get(k)!r} there, {v!r} now"
                for k, v in value.items()
                if (other.get(k) != v) and not (k not in other and v == defaults.get(k))
            ]
        elif other != value:
            diffs.append(
                f"{key.replace('_', ' ')}: differs"
                if key == "instance_data"
                else f"{key}: {other!r} there, {value!r} now"
            )
    return "; ".join(diffs) or None


def _seed_difference(found_seed: Any, cfg: TrainConfig) -> str | None:
    if cfg.seed is None or found_seed is None or int(found_seed) == cfg.seed:
        return None
    return f"--seed: {found_seed} there, {cfg.seed} now"


def read_run_record(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TrainConfigError(f"{path}: unreadable run record ({exc})") from None
    return data if isinstance(data, dict) else None


def previous_work(output_dir: str | Path) -> list[str]:
    """Names of the checkpoints and adapter files another run left in ``output_dir``."""
    out = Path(output_dir)
    found = [p.name for p in ckpt.list_checkpoints(out)]
    found += [name for name in ADAPTER_FILES if (out / name).is_file()]
    found += [
        f"{LAST_ADAPTER_DIR}/{name}" for name in ADAPTER_FILES if (out / LAST_ADAPTER_DIR / name).is_file()
    ]
    return found


# ----------------------------------------------------------------------------- preflight (no changes)


def check_output_location(cfg: TrainConfig) -> None:
    """The output folder is a folder (or can be made one) and can be written."""
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"--output_dir: {cfg.output_dir} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrainConfigError(f"--output_dir: {existing} is a file, so {cfg.output_dir} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainConfigError(f"--output_dir: cannot write in {existing} (read-only or no permission)")


def resolve_resume_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume: `latest` means the newest intact one (damaged newer ones are named in the log)."""
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found, damaged = ckpt.newest_intact_checkpoint(cfg.output_dir)
        for path, problem in damaged:
            logger.warning(
                "%s is damaged (%s); %s",
                path,
                problem,
                f"resuming from {found.name}" if found else "skipping it",
            )
        return found
    path = Path(cfg.resume_from_checkpoint)
    if not path.is_dir() and (Path(cfg.output_dir) / path).is_dir():
        path = Path(cfg.output_dir) / path
    if not path.is_dir():
        raise TrainConfigError(
            f"--resume_from_checkpoint: {cfg.resume_from_checkpoint} is not a checkpoint folder"
        )
    problem = ckpt.checkpoint_problem(path)
    if problem:
        raise TrainConfigError(
            f"--resume_from_checkpoint: {path} is damaged ({problem}); pick another checkpoint"
        )
    return path


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse to resume another run's checkpoint, or to write over another run's work (see the module doc)."""
    check_output_location(cfg)
    resume = resolve_resume_path(cfg)
    if cfg.overwrite_output_dir and resume is None:
        return  # the old run's work is cleared when training starts
    expected = fingerprint(cfg)
    if resume is not None:
        state = ckpt.read_state(resume)
        problem = _difference(state.get("fingerprint"), expected) or _seed_difference(state.get("seed"), cfg)
        if problem:
            raise TrainConfigError(
                f"{resume} belongs to another run ({problem}); refusing to resume it. "
                "Use the same settings, another --output_dir, or --overwrite_output_dir to start afresh."
            )
        return
    work = previous_work(cfg.output_dir)
    if not work:
        return
    record = read_run_record(cfg.output_dir)
    same_run = (
        cfg.resume_from_checkpoint  # "latest" with no checkpoint yet: the same run may start (again)
        and record is not None
        and _difference(record.get("fingerprint"), expected) is None
        and _seed_difference(record.get("seed"), cfg) is None
    )
    if not same_run:
        listing = ", ".join(work[:4]) + (f" and {len(work) - 4} more" if len(work) > 4 else "")
        raise TrainConfigError(
            f"--output_dir {cfg.output_dir} holds another run's work ({listing}); refusing to mix two runs. "
            "Use another --output_dir, --resume_from_checkpoint latest to continue that run, or "
            "--overwrite_output_dir to replace it."
        )


# ----------------------------------------------------------------------------- at start (main process)


def prepare_output_dir(cfg: TrainConfig, seed: int) -> None:
    """Create the folder, remove interrupted leftovers, clear an overwritten run, write ``run.json``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in ckpt.remove_leftovers(out):
        logger.info("removed %s, left by an interrupted run", leftover)
    if cfg.overwrite_output_dir and not cfg.resume_from_checkpoint:
        for path in ckpt.list_checkpoints(out):
            ckpt.delete_folder(path)
        for name in ADAPTER_FILES:
            (out / name).unlink(missing_ok=True)
            (out / LAST_ADAPTER_DIR / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: a user's own files there stay
            (out / LAST_ADAPTER_DIR).rmdir()
    record = {"fingerprint": fingerprint(cfg), "seed": seed, "math": math_settings()}
    write_atomic(out / RUN_RECORD, json.dumps(record, indent=2, default=str))


@contextmanager
def hold_output_dir(cfg: TrainConfig, is_main: bool = True) -> Iterator[None]:
    """Hold ``--output_dir`` for this run (main process): a second run on it is refused, naming the holder.

    The lock is the operating system's (``flock`` on ``.moslora-run.lock``): it ends with the process, so a
    killed run leaves no stale lock. The file names the holder (pid, host, start time) for the message and
    is removed when the run ends.
    """
    if not is_main:
        yield
        return
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = _lock(path, cfg.output_dir)
    try:
        check_output_dir(cfg)  # again, now that no other run can start: one may have ended since preflight
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock ends: a waiting run then finds no file and retries
        os.close(fd)


def _lock(path: Path, shown: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock (the file that is still there, not a removed one)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text(encoding="utf-8", errors="replace").strip() or "starting"
            os.close(fd)
            raise TrainConfigError(
                f"--output_dir {shown} is in use by another run ({holder}); wait for it to end or use "
                "another --output_dir"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
