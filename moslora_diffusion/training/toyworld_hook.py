"""Defaults from the bundled toy world: with no model / data flags, train on the toy base model and subject.

Imported lazily and tolerant of the toy world being absent, so it costs nothing when flags are given.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .args import TrainConfig

logger = logging.getLogger(__name__)

# Keys of the subject's JSON file that fill `TrainConfig` fields when those are unset.
_SUBJECT_KEYS = ("instance_prompt", "class_prompt", "validation_prompt")


def _toyworld() -> Any | None:
    try:
        from .. import toyworld
    except ImportError:
        return None
    return toyworld


def subject_info(folder: Path) -> dict[str, Any]:
    """The subject's JSON description (the first `*.json` in the folder), or {}."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def apply_defaults(cfg: TrainConfig) -> None:
    """Fill `pretrained_model_name_or_path` / `instance_data_dir` (and its prompts) from the toy world."""
    if cfg.pretrained_model_name_or_path and cfg.instance_data_dir:
        return
    tw = _toyworld()
    if tw is None:
        return
    if not cfg.pretrained_model_name_or_path:
        path = Path(tw.base_model_path())
        if (path / "model_index.json").is_file():
            cfg.pretrained_model_name_or_path = str(path)
            logger.info("no --pretrained_model_name_or_path: using the toy-world base model %s", path)
    if not cfg.instance_data_dir:
        folder = Path(tw.subject_path())
        if folder.is_dir():
            cfg.instance_data_dir = str(folder)
            logger.info("no --instance_data_dir: using the toy-world subject %s", folder)
            _apply_subject_info(cfg, subject_info(folder))


def _apply_subject_info(cfg: TrainConfig, info: dict[str, Any]) -> None:
    """Prompts from the subject JSON, plus its optional `train_defaults` for flags still at their default."""
    import dataclasses

    for key in _SUBJECT_KEYS:
        if getattr(cfg, key) is None and isinstance(info.get(key), str):
            setattr(cfg, key, info[key])
    if cfg.validation_prompt is None and cfg.instance_prompt:
        cfg.validation_prompt = cfg.instance_prompt  # toy runs are quick: show what was learnt
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key, value in (info.get("train_defaults") or {}).items():
        if key in defaults and getattr(cfg, key) == defaults[key]:
            setattr(cfg, key, value)
