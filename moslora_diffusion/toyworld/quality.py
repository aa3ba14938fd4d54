"""Learning curves for toy-world runs: a scorer that `run_training(scorer=...)` calls at every validation.

It draws a small fixed panel with the models being trained (the yardstick's prompts, fixed sampling seeds,
the toy model's sampler settings) and reads the images with the attribute reader and the subject detector:

- subject fidelity: "a sks circle on a {bg} background" images that show the subject;
- prompt fidelity: of those, images with the requested background;
- ordinary prompts: held-out (shape, colour, background) prompts drawn with all three right — drift.

Entry points (the training script, ``quickstart``, the web UI) pass :func:`scorer_for` of the run's settings;
it is None unless the run trains the bundled subject on the bundled base model. The training code has no
toy-world case: it only calls a scorer when one is given. The scorer says which images it needs
(``request``), so the trainer draws them in the same pipeline call as its validation samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["SCORE_NAMES", "PanelScorer", "validation_scorer", "scorer_for", "is_toy_run"]

SCORE_NAMES = {
    "subject_fidelity": "subject fidelity",
    "prompt_fidelity": "prompt fidelity",
    "base_drift_accuracy": "ordinary prompts",
}


class PanelScorer:
    """The toy validation scorer: ``request`` (the panel's images, for the trainer to draw together with its
    own samples) and ``score(images)``; calling it with a pipeline draws the panel and scores it."""

    def __init__(self, panel: dict[str, list], subject: Any, settings: dict[str, Any] | None = None) -> None:
        from .scoring import families_request

        self.panel, self.subject = panel, subject
        self.request = families_request(panel, settings)

    def score(self, images: Sequence[Any]) -> dict[str, float]:
        """Named scores in [0, 1] from the images of ``request`` (in its order)."""
        from .scoring import score_images, split_families

        by_family = split_families(self.panel, images)
        scores = score_images({**by_family, "class": []}, {**self.panel, "class": []}, self.subject)
        return {label: scores[key] for key, label in SCORE_NAMES.items()}

    def __call__(self, pipe: Any) -> dict[str, float]:
        from ..sampling import draw

        return self.score(draw(pipe, [self.request])[0])


def validation_scorer(
    subject_per_prompt: int = 2, ordinary_per_prompt: int = 1, subject: Any = None, steps: int | None = None
) -> PanelScorer:
    """A scorer over the yardstick's subject prompts (4 backgrounds x ``subject_per_prompt``) and its
    ordinary-prompt panel (12 prompts x ``ordinary_per_prompt``): 20 images, about 1.5 s on 2 cores.
    ``subject``: a bundled subject or its key (default: the circle); ``steps``: sampler steps (default: the
    toy model's)."""
    from .scoring import prompt_sets
    from .subject import get_subject

    subject = get_subject(subject)
    panel = {
        "subject": prompt_sets(subject_per_prompt, quick=False, subject=subject)["subject"],
        "ordinary": prompt_sets(ordinary_per_prompt, quick=False)["ordinary"],
    }
    return PanelScorer(panel, subject, {"num_inference_steps": steps} if steps else None)


def is_toy_run(base_model: str | None, instance_data_dir: str | None) -> bool:
    """True when the run trains a bundled subject on the bundled base model."""
    from . import is_toy_base
    from .subject import subject_for_folder

    return is_toy_base(base_model) and subject_for_folder(instance_data_dir) is not None


def scorer_for(cfg: Any) -> PanelScorer | None:
    """The toy-world scorer for a `TrainConfig` that trains a bundled subject on the bundled model, else None."""
    from .subject import subject_for_folder

    if is_toy_run(cfg.pretrained_model_name_or_path, cfg.instance_data_dir):
        return validation_scorer(subject=subject_for_folder(cfg.instance_data_dir))
    return None
