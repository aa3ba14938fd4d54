"""The main job in one call: train the bundled example subject on the bundled toy-world base model, then
draw a labelled comparison grid — the subject prompt on several backgrounds, without and with the adapter."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

QUICKSTART_SEEDS = (0, 1, 2)
# Held-out prompts of other shapes (never in pretraining, not the subject): the grid's drift check.
ORDINARY_PROMPTS = ("a blue square on a green background", "a white cross on a red background")
GRID_NAME = "quickstart_comparison.png"


def comparison_grid(
    base_model: str | Path,
    weights: str | Path,
    prompts: Sequence[str],
    seeds: Sequence[int] = QUICKSTART_SEEDS,
    scale: float = 1.0,
):
    """Rows: prompts; columns: each seed without the adapter, then with it. Returns a PIL image."""
    import torch
    from diffusers import StableDiffusionPipeline

    import moslora_diffusion  # noqa: F401  (adds load_moslora_weights)

    from .imaging import labelled_grid
    from .toyworld import pipeline_kwargs

    pipe = StableDiffusionPipeline.from_pretrained(str(base_model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = pipeline_kwargs()

    def draw() -> list:
        gens = [torch.Generator().manual_seed(s) for p in prompts for s in seeds]
        return pipe([p for p in prompts for _ in seeds], generator=gens, **kwargs).images

    without = draw()
    name = pipe.load_moslora_weights(str(weights))
    pipe.set_adapters([name], adapter_weights=[scale])
    with_adapter = draw()
    n = len(seeds)
    rows = [without[i * n : (i + 1) * n] + with_adapter[i * n : (i + 1) * n] for i in range(len(prompts))]
    cols = [f"base s{s}" for s in seeds] + [f"adapter s{s}" for s in seeds]
    return labelled_grid(rows, list(prompts), cols, title="without adapter | with MoSLoRA adapter")


def run_quickstart(argv: Sequence[str] | None = None) -> Path:
    """Train with `train_dreambooth_moslora.py` flags (toy-world defaults) and write the comparison grid."""
    from .toyworld import training_defaults
    from .toyworld.quality import scorer_for
    from .toyworld.subject import subject_for_folder
    from .training import parse_args, run_training

    started = time.time()
    args = list(argv or [])
    # A demo is re-run as is: its own folder, outputs/quickstart, is replaced each time; a folder the user
    # names keeps the usual protection of another run's work.
    own_folder = parse_args(args, defaults={"output_dir": None}).output_dir is None
    quickstart_defaults = (
        {"output_dir": "outputs/quickstart", "overwrite_output_dir": True} if own_folder else {}
    )
    cfg = parse_args(args, defaults={**quickstart_defaults, **training_defaults(args)})
    result = run_training(cfg, scorer=scorer_for(cfg))
    if result.weights_path is None:
        raise RuntimeError("training wrote no adapter")
    bundled = subject_for_folder(cfg.instance_data_dir)
    prompts = (bundled.info().get("validation_prompts") if bundled else None) or [cfg.instance_prompt]
    if bundled:  # and ordinary prompts: the adapter must leave them alone (drift shows here)
        prompts = [*prompts, *ORDINARY_PROMPTS]
    grid = comparison_grid(cfg.pretrained_model_name_or_path, result.weights_path, prompts)
    path = Path(result.output_dir) / GRID_NAME
    grid.save(path)
    print(
        f"\nTrained in {time.time() - started:.0f}s (validation {result.validation_s:.1f}s). Adapter: {result.weights_path}"
    )
    print(f"Comparison grid (rows: prompts; left: base model, right: with the adapter): {path}")
    print(f"Model card: {Path(result.output_dir) / 'README.md'}")
    if "quality_curve" in result.files:
        print(f"Learning curve (subject and prompt scores per validation): {result.files['quality_curve']}")
    if "signals_curve" in result.files:
        print(f"Learning signals (subject fit, binding, prior shift): {result.files['signals_curve']}")
    return path
