"""When is the subject learnt? The stop rule of ``--stop_when_learned`` and the choice of the best validation.

Both read only the signal history (``signals.json``'s rows: ``{"step": n, "subject_fit": …, …}``), so a
study can replay them on recorded curves exactly as training applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Row = Mapping[str, float]

# Chosen on the toy circle (benchmarks/study_signals.py, docs/quality.md): the only setting of the grid that
# stops within half the recipe's steps with the subject kept. On the toy star the same rule stops far too early.
DEFAULT_PATIENCE = 1
DEFAULT_MIN_IMPROVEMENT = 0.2
DEFAULT_MAX_PROMPT_SHIFT = 1.0  # a safety net: never reached by the toy subjects (at most 0.17 there)


@dataclass(frozen=True)
class StopRule:
    """Stop when the subject fit improved by less than ``min_improvement`` (relative) over the last
    ``patience`` validations, or when the ordinary prompts' prediction moved more than ``max_prompt_shift``."""

    patience: int = DEFAULT_PATIENCE
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    max_prompt_shift: float = DEFAULT_MAX_PROMPT_SHIFT

    @classmethod
    def from_config(cls, cfg: object) -> StopRule:
        return cls(cfg.stop_patience, cfg.stop_min_improvement, cfg.stop_max_prompt_shift)  # type: ignore[attr-defined]

    def reason(self, history: Sequence[Row]) -> str | None:
        """Why training should stop after the last row of ``history`` (None: go on)."""
        rows = [r for r in history if r["step"] > 0]
        if not rows:
            return None
        shift = rows[-1].get("prompt_shift", math.nan)
        if math.isfinite(shift) and shift > self.max_prompt_shift:
            return f"the ordinary prompts' prediction moved {shift:.3g} (bound {self.max_prompt_shift:g})"
        fits = [r["subject_fit"] for r in history]  # the step-0 row counts as the starting point
        if len(rows) < self.patience + 1 or len(fits) <= self.patience:
            return None
        before, recent = min(fits[: -self.patience]), min(fits[-self.patience :])
        if recent > before * (1 - self.min_improvement):
            gain = 1 - recent / before if before > 0 else 0.0
            return (
                f"the subject fit improved {100 * gain:.1f} % over the last {self.patience} validations "
                f"(less than {100 * self.min_improvement:g} %)"
            )
        return None

    def best(self, history: Sequence[Row]) -> Row | None:
        """The validation to keep: the lowest subject fit among those within the prompt-shift bound."""
        rows = [r for r in history if r["step"] > 0]
        ok = [r for r in rows if not r.get("prompt_shift", 0.0) > self.max_prompt_shift]
        return min(ok or rows[:1], key=lambda r: r["subject_fit"], default=None)
