"""What a yardstick study runs: its methods, metrics' labels and settings, and the training flags it passes on."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RequestError
from ..toyworld.scoring import METRICS

__all__ = ["METRICS", "METRIC_LABELS", "METHOD_KEYS", "BenchConfig", "parse_train_args"]

METRIC_LABELS = {
    "subject_fidelity": "subject fidelity",
    "prompt_fidelity": "prompt fidelity",
    "prior_preservation": "prior preservation",
    "base_drift_accuracy": "ordinary prompts (all 3 right)",
}


METHOD_KEYS = (
    "moslora",
    "lora",
    "lora-2r",
)  # --methods: MoSLoRA r, LoRA r, LoRA 2r (see BenchConfig.methods)


@dataclasses.dataclass
class BenchConfig:
    """What `eval-toyworld` runs. `quick` shrinks everything for tests."""

    rank: int = 8  # the subject's own training default
    seeds: int = 10
    max_train_steps: int | None = None  # None: the subject's own training defaults
    images_per_prompt: int = 4
    output_dir: str | None = None
    quick: bool = False  # fewer prompts (tests)
    extra_train_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_names: tuple[str, ...] = METHOD_KEYS
    curves: bool = False  # record each run's learning curve (the toy scorer every `curve_every` steps)
    curve_every: int = 100
    subject: str = "circle"  # a key of subject.SUBJECTS

    def methods(self) -> list[tuple[str, str, int]]:
        table = {
            "moslora": (f"MoSLoRA r={self.rank}", "moslora", self.rank),
            "lora": (f"LoRA r={self.rank}", "lora", self.rank),
            "lora-2r": (f"LoRA r={2 * self.rank}", "lora", 2 * self.rank),
        }
        return [table[name] for name in self.method_names]

    @classmethod
    def smoke_config(cls, **kw: Any) -> BenchConfig:
        """A run for tests: 2 seeds, 4 steps, one image per prompt, few prompts."""
        base = dict(seeds=2, max_train_steps=4, images_per_prompt=1, quick=True)
        base.update(kw)
        return cls(**base)

    @classmethod
    def recheck_config(cls, **kw: Any) -> BenchConfig:
        """`--quick`: MoSLoRA vs LoRA at equal rank, 3 seeds, the full recipe, 2 images per prompt."""
        base = dict(seeds=3, images_per_prompt=2, method_names=("moslora", "lora"))
        base.update(kw)
        return cls(**base)


_BENCH_FLAGS = frozenset({"adapter", "rank", "seed", "output_dir", "overwrite_output_dir", "checkpointing_steps",
                          "validation_prompt", "validation_steps", "pretrained_model_name_or_path",
                          "instance_data_dir"})  # fmt: skip


def parse_train_args(items: list[str]) -> dict[str, Any]:
    """``--train_arg FLAG=VALUE`` (``FLAG`` / ``no-FLAG`` for a switch) into training flags for every run."""
    import dataclasses as dc

    from ..training.args import TrainConfig

    fields = {f.name for f in dc.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().removeprefix("--")
        switch_off = not sep and name.startswith("no-") and name[3:] in fields
        if switch_off:
            name = name[3:]
        if name not in fields:
            raise RequestError(f"--train_arg {item!r}: no training flag --{name}")
        if name in _BENCH_FLAGS:
            raise RequestError(f"--train_arg {item!r}: eval-toyworld sets --{name} itself for each run")
        out[name] = value if sep else not switch_off
    return out
