"""Drawing images: the samplers on offer, and one image per (prompt, seed) with several requests in shared
pipeline calls.

A training validation draws its sample prompt and, on toy runs, the scorer's panel; with the same sampler
setting they go through the pipeline as one batch (one call of 24 images instead of 20 + 4: the quick
start's validation takes 13 % less time, as the toy UNet's time per image falls with the batch size). Every image gets its own CPU
generator seeded with its seed, so an image does not depend on what it was batched with, nor on the device
(up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SCHEDULERS", "SampleRequest", "draw", "make_scheduler"]

# sampler name (as the web UI shows it) -> (diffusers scheduler class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "UniPC": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """The sampler ``name`` of :data:`SCHEDULERS`, built on a model's own scheduler config."""
    import diffusers

    cls_name, extra = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config({**base_config, **extra})


@dataclass(frozen=True)
class SampleRequest:
    """Images to draw: one per (prompt, seed), all with one sampler setting."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.seeds):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.seeds)} seeds")

    @property
    def setting(self) -> tuple[int, float, int, int]:
        """What must be equal for two requests to share a pipeline call."""
        return (self.num_inference_steps, self.guidance_scale, self.height, self.width)


def draw(
    pipe: Any, requests: Sequence[SampleRequest], max_batch: int = 64, progress: Any = None
) -> list[list[Any]]:
    """The images of each request, in request order. Requests with the same setting are drawn together, in
    pipeline calls of at most ``max_batch`` images; ``progress(n)`` (optional) is told of each call's size."""
    import torch

    out: list[list[Any]] = [[] for _ in requests]
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(req.setting, []).append(i)
    for members in groups.values():
        first = requests[members[0]]
        jobs = [(i, p, s) for i in members for p, s in zip(requests[i].prompts, requests[i].seeds)]
        for start in range(0, len(jobs), max_batch):
            chunk = jobs[start : start + max_batch]
            with torch.no_grad():
                images = pipe(
                    prompt=[p for _, p, _ in chunk],
                    generator=[torch.Generator().manual_seed(int(s)) for _, _, s in chunk],
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    height=first.height,
                    width=first.width,
                ).images
            for (i, _, _), image in zip(chunk, images):
                out[i].append(image)
            if progress is not None:
                progress(len(chunk))
    return out
