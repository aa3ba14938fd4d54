"""The toy world's training defaults, for entry points only.

The training script, ``moslora-diffusion quickstart``, ``eval-toyworld`` and the web UI pass these to
`moslora_diffusion.training.parse_args(argv, defaults=...)` *before* parsing, so a flag the user typed
always wins (even when it equals a generic default), and the training code never special-cases the toy
world. Rules:

- no ``--pretrained_model_name_or_path``: the bundled toy-world base model;
- and no ``--instance_data_dir`` either: the bundled subject, its prompts and its ``train_defaults``;
- or ``--instance_data_dir`` a bundled subject's folder (``assets/subject_star``): that subject's prompts and
  ``train_defaults``;
- with ``--dataset_config`` only the base model: the dataset file describes the data.

A base model given without ``--instance_data_dir`` gets no default data: preflight then says that
``--instance_data_dir`` is required (a toy subject on a real model would be a surprise, not a default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["subject_training_defaults", "training_defaults"]

_SUBJECT_PROMPTS = ("instance_prompt", "class_prompt", "validation_prompt")


def subject_training_defaults(subject: Any = None) -> dict[str, Any]:
    """Data folder, prompts and ``train_defaults`` of a bundled subject (its subject.json; default: the
    circle)."""
    from .subject import get_subject

    subj = get_subject(subject)
    info = subj.info()
    defaults: dict[str, Any] = {"instance_data_dir": str(subj.path)}
    defaults.update({k: info[k] for k in _SUBJECT_PROMPTS if isinstance(info.get(k), str)})
    defaults.setdefault("validation_prompt", defaults.get("instance_prompt"))  # toy runs are quick: show them
    defaults["signal_prompts"] = signal_prompts()
    defaults.update(info.get("train_defaults") or {})
    return defaults


def signal_prompts(count: int = 4) -> str:
    """The prior-shift signal's ordinary prompts for toy runs: held-out shapes the yardstick also draws."""
    from .data import HELD_OUT_COMBOS
    from .render import caption

    return "|".join(caption(*combo) for combo in list(HELD_OUT_COMBOS)[:count])


def training_defaults(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parser defaults for a training entry point called with ``argv`` (see the module docstring)."""
    from ..training.args import parse_args
    from . import base_model_path
    from .subject import subject_for_folder

    given = parse_args(list(argv) if argv is not None else None)
    if given.pretrained_model_name_or_path is not None:
        return {}
    defaults: dict[str, Any] = {"pretrained_model_name_or_path": str(base_model_path())}
    if given.dataset_config is not None:  # the dataset file describes the data: no subject folder or prompts
        return defaults
    if given.instance_data_dir is None:
        defaults.update(subject_training_defaults())
    else:
        subject = subject_for_folder(given.instance_data_dir)
        if subject is not None:  # another bundled subject's folder: its prompts and recipe too
            defaults.update(subject_training_defaults(subject))
    return defaults
