"""Adapter tools: shrink an adapter's rank (``resize``), add adapters into one (``merge``), fold adapters into a
base model's weights (``merge_into_model``). Inputs are native, diffusers or kohya files
(:mod:`moslora_diffusion.formats.lowrank`); outputs are plain LoRA files or a model folder, with provenance.

Resizing is the best rank-k approximation of each module's delta (Eckart–Young): the SVD of ``up · down``,
computed from QR factors of ``up`` and ``downᵀ`` (an r × r SVD, never the full out × in matrix). The share kept
is Frobenius: ``‖delta_k‖ / ‖delta‖ = sqrt(Σ kept σ² / Σ σ²)``; the error is ``sqrt(Σ dropped σ²)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import RequestError
from .formats.lowrank import LowRankAdapter, LowRankModule, read_low_rank, to_state_dict, write_low_rank

__all__ = [
    "ModuleResize",
    "ResizeReport",
    "merge_adapters",
    "merge_files",
    "merge_into_model",
    "resize_adapter",
    "resize_file",
    "truncate_module",
]


@dataclass(frozen=True)
class ModuleResize:
    """What resizing did to one module."""

    name: str
    old_rank: int
    new_rank: int
    share_kept: float  # Frobenius share of the delta kept, in [0, 1]
    error: float  # Frobenius norm of what was dropped
    norm: float  # Frobenius norm of the delta before


@dataclass(frozen=True)
class ResizeReport:
    modules: list[ModuleResize]
    share_kept: float  # over the whole adapter: sqrt(Σ kept² / Σ all²) over every module

    def table(self) -> str:
        """One line per module and the total, for the command line."""
        width = max([len("module"), *(len(m.name) for m in self.modules)])
        lines = [f"{'module':<{width}}  rank      kept"]
        lines += [
            f"{m.name:<{width}}  {m.old_rank:>3}→{m.new_rank:<3}  {100 * m.share_kept:6.2f} %"
            for m in self.modules
        ]
        old = sum(m.old_rank for m in self.modules)
        new = sum(m.new_rank for m in self.modules)
        lines.append(f"{'all modules':<{width}}  {old:>3}→{new:<3}  {100 * self.share_kept:6.2f} %")
        return "\n".join(lines)


def _svd(module: LowRankModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``delta = U diag(S) Vᵀ`` (float64) from QR factors of up and downᵀ; S descending, r entries at most."""
    r = module.rank
    up = module.up.reshape(module.up.shape[0], r).to(torch.float64)
    down = module.down.reshape(r, -1).to(torch.float64)
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    return q_up @ u, s, q_down @ vh.T


def _rank_for(s: torch.Tensor, rank: int, share: float | None) -> int:
    """The rank to keep: ``rank``, or with ``share`` the smallest rank whose Frobenius share reaches it
    (``rank`` then caps it)."""
    if share is None:
        return max(1, min(rank, len(s)))
    energy = torch.cumsum(s**2, 0)
    total = float(energy[-1]) if len(s) else 0.0
    if total == 0.0:
        return 1
    reached = (torch.sqrt(energy / total) >= share - 1e-12).nonzero()
    needed = int(reached[0]) + 1 if len(reached) else len(s)
    return max(1, min(rank, needed))


def truncate_module(
    module: LowRankModule, rank: int, share: float | None = None
) -> tuple[LowRankModule, ModuleResize]:
    """The best approximation of ``module``'s delta at ``rank`` (or the smallest rank keeping ``share``)."""
    u, s, v = _svd(module)
    k = _rank_for(s, rank, share)
    root = torch.sqrt(s[:k])
    up = (u[:, :k] * root).reshape(module.up.shape[0], k, *module.up.shape[2:])
    down = (root[:, None] * v[:, :k].T).reshape(k, *module.down.shape[1:])
    total = float((s**2).sum())
    kept = float((s[:k] ** 2).sum())
    report = ModuleResize(
        f"{module.component}.{module.name}",
        module.rank,
        k,
        math.sqrt(kept / total) if total else 1.0,
        math.sqrt(max(total - kept, 0.0)),
        math.sqrt(total),
    )
    resized = LowRankModule(module.component, module.name, down.to(module.down.dtype), up.to(module.up.dtype))
    return resized, report


def resize_adapter(
    adapter: LowRankAdapter, rank: int, share: float | None = None
) -> tuple[LowRankAdapter, ResizeReport]:
    """Every module truncated to ``rank`` (with ``share``: to the smallest rank keeping that Frobenius share of
    its delta, at most ``rank``). Exact (to float rounding) where ``rank`` ≥ the delta's rank."""
    _check_rank(rank, share)
    modules, reports = [], []
    for m in adapter.modules:
        resized, report = truncate_module(m, rank, share)
        modules.append(resized)
        reports.append(report)
    whole = sum(r.norm**2 for r in reports)
    dropped = sum(r.error**2 for r in reports)
    overall = math.sqrt(max(whole - dropped, 0.0) / whole) if whole else 1.0
    return adapter.with_modules(modules), ResizeReport(reports, overall)


def _check_rank(rank: int, share: float | None) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RequestError(f"the rank must be a positive integer; got {rank!r}")
    if share is not None and not (0.0 < share <= 1.0):
        raise RequestError(f"the share to keep must be in (0, 1]; got {share!r}")


def merge_adapters(adapters: Sequence[LowRankAdapter], weights: Sequence[float]) -> LowRankAdapter:
    """One plain LoRA whose delta is ``Σ wᵢ · deltaᵢ`` for every module: the down matrices stacked, the up
    matrices (times their weight) side by side, so ranks add where adapters share a module. Exact."""
    if len(adapters) < 1:
        raise RequestError("merge needs at least one adapter")
    if len(weights) != len(adapters):
        raise RequestError(
            f"{len(adapters)} adapters but {len(weights)} weights: give one weight per adapter"
        )
    if not all(math.isfinite(w) for w in weights):
        raise RequestError(f"the weights must be finite numbers; got {list(weights)}")
    archs = {a.architecture for a in adapters if a.architecture}
    if len(archs) > 1:
        names = ", ".join(f"{a.source}: {a.architecture}" for a in adapters)
        raise RequestError(f"the adapters are for different base models ({names}); merge only one family")
    arch = archs.pop() if archs else None
    if any(
        a.naming == "kohya" for a in adapters
    ):  # one naming for all: kohya's (model paths cannot be recovered)
        adapters = [(a if a.architecture else a.with_modules(a.modules, architecture=arch)).in_kohya_naming()
                    for a in adapters]  # fmt: skip
    parts: dict[tuple[str, str], list[LowRankModule]] = {}
    for adapter, weight in zip(adapters, weights):
        for m in adapter.modules:
            weighted = LowRankModule(
                m.component, m.name, m.down, (m.up.to(torch.float64) * weight).to(m.up.dtype)
            )
            parts.setdefault((m.component, m.name), []).append(weighted)
    merged = []
    for (component, name), found in parts.items():
        shapes = {(tuple(m.up.shape[:1]), tuple(m.down.shape[1:])) for m in found}
        if len(shapes) > 1:
            raise RequestError(
                f"module {component}.{name} has different shapes in the adapters: {sorted(shapes)}"
            )
        dtype = torch.promote_types(found[0].down.dtype, torch.float32)
        down = torch.cat([m.down.to(dtype) for m in found], 0)
        up = torch.cat([m.up.to(dtype) for m in found], 1)
        merged.append(LowRankModule(component, name, down, up))
    first = adapters[0]
    provenance = {k: v for a in adapters for k, v in a.provenance.items()} if len(adapters) == 1 else {}
    return LowRankAdapter(merged, first.naming, arch, first.unet_config, provenance, None)


# ---------------------------------------------------------------------------------------- file in, file out


def _default_format(adapters: Sequence[LowRankAdapter]) -> str:
    return "kohya" if any(a.naming == "kohya" for a in adapters) else "diffusers"


def resize_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    rank: int,
    *,
    share: float | None = None,
    format: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, ResizeReport]:
    """Resize an adapter file (native, diffusers or kohya) and write a plain LoRA; return its path and report."""
    _check_rank(rank, share)
    adapter = read_low_rank(source)
    resized, report = resize_adapter(adapter, rank, share)
    note = {"tool": "resize", "source": Path(source).name, "rank": rank, "share": share,
            "share_kept": round(report.share_kept, 6)}  # fmt: skip
    path = write_low_rank(resized, output, format or _default_format([adapter]), sources=[str(source)],
                          note=note, overwrite=overwrite)  # fmt: skip
    return path, report


def merge_files(
    sources: Sequence[str | os.PathLike],
    weights: Sequence[float] | None,
    output: str | os.PathLike,
    *,
    rank: int | None = None,
    share: float | None = None,
    format: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, ResizeReport | None]:
    """Merge adapter files into one plain LoRA (ranks add; ``rank`` / ``share`` resize it after)."""
    weights = list(weights) if weights is not None else [1.0] * len(sources)
    if rank is not None:
        _check_rank(rank, share)
    adapters = [read_low_rank(s) for s in sources]
    merged = merge_adapters(adapters, weights)
    report = None
    if rank is not None:
        merged, report = resize_adapter(merged, rank, share)
    note = {"tool": "merge", "sources": [Path(s).name for s in sources], "weights": weights, "rank": rank,
            "share": share, "provenance": [a.provenance for a in adapters]}  # fmt: skip
    path = write_low_rank(merged, output, format or _default_format(adapters), sources=[str(s) for s in sources],
                          note=note, overwrite=overwrite)  # fmt: skip
    return path, report


def merge_into_model(
    base: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    weights: Sequence[float] | None,
    output: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Fold adapters (``Σ wᵢ · deltaᵢ``) into a base model's weights and save the merged model.

    ``base`` is a diffusers folder or a single-file checkpoint (``config``: its diffusers config folder, as for
    training). ``output`` ending in ``.safetensors`` (single-file base only) is a copy of the checkpoint in its
    original layout, which AUTOMATIC1111 and ComfyUI load, with the deltas added to the weights they change;
    anything else is a diffusers folder (diffusers' own ``fuse_lora``). Every adapter is fit-checked against
    the model before any weight changes; the output is written beside its final place and renamed into it."""
    from .base_models import is_single_file, load_pipeline

    weights = list(weights) if weights is not None else [1.0] * len(sources)
    merged = merge_adapters([read_low_rank(s) for s in sources], weights)
    out = Path(output)
    single = out.suffix == ".safetensors"
    if out.exists() and out.resolve() == Path(base).resolve():
        raise RequestError(f"{out} is the base model itself; write the merged model elsewhere")
    if single and not is_single_file(base):
        raise RequestError(
            f"{base} is a diffusers folder: a single-file output needs a single-file base (or name a folder)"
        )
    if out.exists() and (out.is_dir() == single):
        kind = "folder" if single else "file"
        raise RequestError(
            f"{out} is a {kind}; the merged model is written as a {'file' if single else 'folder'}"
        )
    if out.exists() and not overwrite:
        raise RequestError(f"{out} exists; choose another output or allow replacing it (CLI: --force)")
    if single:
        return _merge_into_single_file(Path(base), merged, out, config, sources, weights)
    pipe = load_pipeline(base, config=config)
    state = to_state_dict(merged, "kohya" if merged.naming == "kohya" else "diffusers")
    name = pipe.load_moslora_weights(state, adapter_name="merged")
    pipe.fuse_lora(adapter_names=[name], lora_scale=1.0)
    pipe.unload_lora_weights()
    from .durable import temporary_folder_beside

    with temporary_folder_beside(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    return out


def _merge_into_single_file(
    base: Path, merged: LowRankAdapter, out: Path, config: str | os.PathLike | None, sources: Sequence[Any],
    weights: list[float],
) -> Path:  # fmt: skip
    """Add each module's delta to its weight in the checkpoint's own tensors, found by value (below)."""
    import json

    from safetensors.torch import save_file

    from .base_models import load_pipeline
    from .durable import temporary_beside
    from .formats.inspect import ModuleShape
    from .formats.safetensors_io import read_safetensors
    from .loading import check_fit

    tensors, metadata = read_safetensors(base)
    pipe = load_pipeline(base, config=config)  # float32: every fp16 / bf16 value of the file, exactly
    shapes = [
        ModuleShape(m.component, m.name, tuple(m.down.shape), tuple(m.up.shape)) for m in merged.modules
    ]
    kind = "kohya" if merged.naming == "kohya" else "diffusers"
    resolved = check_fit(pipe, shapes, "the merged adapter", kind, merged.architecture)
    layers = {}
    for m in merged.modules:
        path = resolved[(m.component, m.name)]
        layers[(m.component, m.name)] = dict(getattr(pipe, m.component).named_modules())[path].weight.detach()
    places = locate_weights(tensors, layers)
    for m in merged.modules:
        key, start = places[(m.component, m.name)]
        rows = tensors[key][start : start + m.up.shape[0]]
        rows.copy_((rows.to(torch.float64) + m.delta().reshape(rows.shape)).to(rows.dtype))
    note = {
        "tool": "merge",
        "sources": [Path(s).name for s in sources],
        "weights": weights,
        "base": base.name,
    }
    meta = {**metadata, "moslora_merged": json.dumps(note, sort_keys=True)}
    with temporary_beside(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def locate_weights(
    tensors: dict[str, torch.Tensor], layers: dict[Any, torch.Tensor]
) -> dict[Any, tuple[str, int]]:
    """Where each model weight sits in a checkpoint of the original layout: ``(key, first row)``.

    Found by value rather than by a hand-written key map: diffusers built the model from these very tensors,
    so each weight equals a tensor of the file or a block of its rows (OpenCLIP's fused q/k/v
    ``in_proj_weight``), bit for bit. EMA copies (``model_ema.``) are left out; a weight found in no place or in
    several is an error naming the module, never a guess."""
    wanted: dict[tuple[int, bytes], list[Any]] = {}
    outs: dict[int, set[int]] = {}
    flat = {}
    for name, w in layers.items():
        w2 = w.reshape(w.shape[0], -1).float()
        flat[name] = w2
        wanted.setdefault((w2.shape[1], w2[0].numpy().tobytes()), []).append(name)
        outs.setdefault(w2.shape[1], set()).add(w2.shape[0])
    found: dict[Any, list[tuple[str, int]]] = {name: [] for name in layers}
    for key, t in tensors.items():
        if t.ndim < 2 or key.startswith("model_ema.") or t.reshape(t.shape[0], -1).shape[1] not in outs:
            continue
        t2 = t.reshape(t.shape[0], -1)
        for out in outs[t2.shape[1]]:
            if t2.shape[0] % out:
                continue
            for start in range(0, t2.shape[0], out):
                for name in wanted.get((t2.shape[1], t2[start].float().numpy().tobytes()), []):
                    w2 = flat[name]
                    if w2.shape[0] == out and torch.equal(t2[start : start + out].float(), w2):
                        found[name].append((key, start))
    for name, places in found.items():
        if len(places) != 1:
            what = "is not in" if not places else f"matches {len(places)} places of"
            raise RequestError(
                f"module {'.'.join(name)}: its weight {what} the checkpoint; cannot merge it safely"
            )
    return {name: places[0] for name, places in found.items()}
