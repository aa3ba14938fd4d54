"""Training checkpoints: adapter tensors, optimizer, LR schedule, RNG states and step; never the base model.

Layout of `output_dir/checkpoint-<step>/`:

    adapter.safetensors      every trainable tensor, keyed `<component>.<parameter name>` (fp32)
    optimizer.pt, scheduler.pt   state dicts (torch.save; read back with weights_only=True)
    rng-<rank>.json / rng-<rank>.safetensors   Python, NumPy and torch RNG states of each process
    state.json               step, seed, loss history and the run's fingerprint (base model + adapter)

A checkpoint is written into a hidden temporary folder, every file and the folder are fsynced, and only then
renamed into place, so a crash or a power loss never leaves a half-written `checkpoint-<step>`; pruning
renames before it deletes. `checkpoint_problem` tells an intact checkpoint from a damaged one. Which run a
folder belongs to is `run_folder`'s business.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..durable import fsync_tree, replace_durably
from ..errors import MoSLoraFormatError, OutputWriteError, TrainConfigError
from ..formats.safetensors_io import read_header

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "state.json"
ADAPTER_NAME = "adapter.safetensors"
BEST_ADAPTER_NAME = "best_adapter.safetensors"  # with --stop_when_learned: the best validation's adapter
REQUIRED_FILES = (STATE_NAME, ADAPTER_NAME, "optimizer.pt", "scheduler.pt", "rng-0.json", "rng-0.safetensors")
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
# Hidden names only this toolkit writes: checkpoint temp/old/deleting folders and atomic-write temp files.
_LEFTOVER_RE = re.compile(r"^\.(checkpoint-\d+\.(tmp|old|deleting)|.+\.tmp(\.png)?|README\.md\.tmp)$")


# ----------------------------------------------------------------------------- finding checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, oldest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainConfigError(f"{path}: not a readable checkpoint state ({exc})") from None


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """What is wrong with a checkpoint folder (a missing, empty or unreadable file), or None when intact.

    Reads headers and checksums, not the tensors: cheap enough to run on every checkpoint at start-up.
    """
    ckpt = Path(checkpoint)
    for name in REQUIRED_FILES:
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size == 0:
            return f"{name} is empty"
    try:
        state = json.loads((ckpt / STATE_NAME).read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE_NAME} is unreadable ({exc})"
    for name in (ADAPTER_NAME, "rng-0.safetensors"):
        try:
            read_header(ckpt / name)
        except MoSLoraFormatError as exc:
            return f"{name} is unreadable ({exc})"
    for name in ("optimizer.pt", "scheduler.pt"):
        try:
            with zipfile.ZipFile(ckpt / name) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{name} is unreadable ({exc})"
        if bad is not None:
            return f"{name} is corrupt ({bad} fails its checksum)"
    return None


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest intact checkpoint or None, [(damaged newer checkpoint, problem), ...])."""
    damaged = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, damaged
        damaged.append((ckpt, problem))
    return None, damaged


def remove_leftovers(output_dir: str | Path) -> list[Path]:
    """Delete what an interrupted run leaves under hidden names: half-written checkpoints and files."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    removed = []
    for entry in out.iterdir():
        if _LEFTOVER_RE.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def delete_folder(path: Path) -> None:
    """Rename to a hidden name first, then delete: a kill half-way never leaves a partial folder under a good name."""
    hidden = path.with_name(f".{path.name}.deleting")
    if hidden.exists():
        shutil.rmtree(hidden)
    replace_durably(path, hidden)
    shutil.rmtree(hidden)


# ----------------------------------------------------------------------------- RNG states


def capture_rng(noise_generator: torch.Generator | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of this process's RNG states."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    if noise_generator is not None:
        tensors["noise"] = noise_generator.get_state()
    return meta, tensors


def restore_rng(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], noise_generator: torch.Generator | None
) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    if noise_generator is not None and "noise" in tensors:
        noise_generator.set_state(tensors["noise"])


# ----------------------------------------------------------------------------- saving / loading


def trainable_state(models: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every trainable tensor of the (unwrapped) models, keyed `<component>.<parameter name>`, fp32."""
    return {
        f"{component}.{name}": p.detach().float().cpu().contiguous()
        for component, model in models.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a state dict (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_trainable_state(
    models: Mapping[str, torch.nn.Module], state: Mapping[str, torch.Tensor], source: str
) -> None:
    own = {
        f"{component}.{name}": p
        for component, model in models.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise TrainConfigError(
            f"{source}: adapter tensors do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for key, p in own.items():
            if p.shape != state[key].shape:
                raise TrainConfigError(
                    f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(state[key].to(p.dtype))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    noise_generator: torch.Generator | None,
    is_main: bool = True,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    best_adapter: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `checkpoint-<step>` atomically; every process must call it (each stores its RNG state).
    ``best_adapter`` (main process): the adapter tensors of the best validation so far, kept beside."""
    out = Path(output_dir)
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    meta, tensors = capture_rng(noise_generator)
    adapter = trainable_state(models)
    # Each process records a digest of its adapter: equal digests show the processes stayed in sync.
    meta["adapter_sha256"] = state_digest(adapter)
    try:
        (tmp / f"rng-{rank}.json").write_text(json.dumps(meta))
        save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out, final.name, exc) from None
    barrier()
    if is_main:
        try:
            save_file(adapter, str(tmp / ADAPTER_NAME))
            if best_adapter is not None:
                save_file(dict(best_adapter), str(tmp / BEST_ADAPTER_NAME))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / STATE_NAME).write_text(json.dumps({**state, "step": step}, indent=2, default=str))
            fsync_tree(tmp)
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(out, final.name, exc) from None
        if final.exists():  # the same run saving the same step again (resumed from an earlier checkpoint)
            delete_folder(final)
        replace_durably(tmp, final)
    barrier()
    return final


def _write_error(out: Path, name: str, exc: BaseException) -> OutputWriteError:
    previous = [p.name for p in list_checkpoints(out)]
    kept = (
        f"the previous checkpoint ({previous[-1]}) is intact" if previous else "no earlier checkpoint exists"
    )
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = None
    if getattr(exc, "errno", None) == errno.ENOSPC or (free is not None and free < 64 * 2**20):
        return OutputWriteError(f"no space left on {out} while writing {name}; {kept}")
    return OutputWriteError(f"could not write {name} in {out} ({exc}); {kept}")


def load_checkpoint(
    checkpoint: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    noise_generator: torch.Generator | None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore adapter, optimizer, schedule and this process's RNG state; return the saved state.json."""
    ckpt = Path(checkpoint)
    state = read_state(ckpt)
    load_trainable_state(models, load_file(str(ckpt / ADAPTER_NAME)), str(ckpt / ADAPTER_NAME))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    lr_scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_json = ckpt / f"rng-{rank}.json"
    if not rng_json.is_file():  # resumed with more processes than saved: reuse rank 0's state
        rng_json = ckpt / "rng-0.json"
    meta = json.loads(rng_json.read_text())
    tensors = load_file(str(rng_json.with_suffix(".safetensors")))
    restore_rng(meta, tensors, noise_generator)
    return state


def read_best_adapter(checkpoint: str | Path) -> dict[str, torch.Tensor] | None:
    """The best validation's adapter tensors a checkpoint keeps (None when it keeps none)."""
    path = Path(checkpoint) / BEST_ADAPTER_NAME
    return load_file(str(path)) if path.is_file() else None


def prune_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most `limit` remain; return the deleted folders."""
    if not limit:
        return []
    found = list_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - limit)]
    for path in doomed:
        delete_folder(path)
    return doomed
