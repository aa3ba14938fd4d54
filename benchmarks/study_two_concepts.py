"""Two concepts in one adapter through --dataset_config: are both learnt, and are ordinary prompts kept?

Trains, per seed, one MoSLoRA adapter on the toy circle ("a sks circle") and the toy star ("a sks shape") from
one kohya-style dataset TOML (a subset each, captions from the subjects' own files, the star's recipe: rank 8,
text-encoder adapter, lr 1e-3, batch 6, 600 steps), and — the alternative a user has — one adapter per subject
with its own recipe (circle 300 steps, star 600). Each adapter is scored by the toy reader on each subject's
prompt panel (subject fidelity, prompt fidelity, prior preservation, ordinary prompts). Writes a dated table
and a grid (base model vs the two-concept adapter) to docs/quality.md.

    python benchmarks/study_two_concepts.py --seeds 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "quality.md"
GRID = Path(__file__).resolve().parent.parent / "docs" / "images" / "two_concepts.png"
SUBJECTS = ("circle", "star")


def dataset_toml(folder: Path) -> Path:
    """The two subjects as one dataset file (their captions come from their metadata.jsonl)."""
    from moslora_diffusion.toyworld.subject import get_subject

    lines = ["[general]", "resolution = 32", "batch_size = 6", "", "[[datasets]]"]
    for name in SUBJECTS:
        subject = get_subject(name)
        lines += [
            "  [[datasets.subsets]]",
            f'  image_dir = "{subject.path}"',
            f'  class_tokens = "{subject.instance_prompt}"',
        ]
    path = folder / "two_concepts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(out: Path, seed: int, data: list[str], steps: int) -> Path:
    from moslora_diffusion.toyworld.defaults import training_defaults
    from moslora_diffusion.training import parse_args, run_training

    args = [*data, "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "--max_train_steps",
            str(steps), "--checkpointing_steps", "0", "--validation_prompt", "", "--no-signals"]  # fmt: skip
    recipe = ["--unet_targets", "attn2.to_q,attn2.to_k,attn2.to_v,attn2.to_out.0,ff.net.0.proj,ff.net.2",
              "--train_text_encoder", "--rank", "8", "--learning_rate", "1e-3"]  # fmt: skip
    if data[0] == "--dataset_config":
        args += recipe  # a dataset file brings no subject recipe: the star's, given here
    result = run_training(parse_args(args, defaults=training_defaults(args)))
    return Path(result.weights_path)


def score(pipe: Any, weights: Path | None, subject: str, images_per_prompt: int) -> dict[str, float]:
    from moslora_diffusion.toyworld.scoring import generate_families, prompt_sets, score_images

    name = pipe.load_moslora_weights(str(weights)) if weights else None
    try:
        sets = prompt_sets(images_per_prompt, False, subject)
        return score_images(generate_families(pipe, sets), sets, subject)
    finally:
        if name:
            pipe.delete_adapters(name)


def grid(pipe: Any, weights: Path) -> None:
    from moslora_diffusion.durable import write_image
    from moslora_diffusion.imaging import labelled_grid
    from moslora_diffusion.toyworld.evaluate import generate

    prompts = ["a sks circle on a blue background", "a sks circle on a purple background",
               "a sks shape on a red background", "a sks shape on a yellow background",
               "a circle on a blue background", "a blue triangle on a red background"]  # fmt: skip
    seeds = [7] * len(prompts)
    rows = [generate(pipe, prompts, seeds)]
    name = pipe.load_moslora_weights(str(weights))
    rows.append(generate(pipe, prompts, seeds))
    pipe.delete_adapters(name)
    labels = [p.removeprefix("a ").replace(" background", "") for p in prompts]
    write_image(GRID, labelled_grid(rows, ["base model", "circle + star adapter"], labels,
                                    "one adapter, two concepts (--dataset_config)"))  # fmt: skip


def main() -> int:
    import torch

    from moslora_diffusion.reporting import append_section, markdown_table
    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline
    from moslora_diffusion.toyworld.subject import get_subject
    from moslora_diffusion.yardstick.stats import format_mean_ci, mean_ci95

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--docs", default=str(DOCS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.output_dir or tempfile.mkdtemp(prefix="two-concepts-"))
    work.mkdir(parents=True, exist_ok=True)
    toml = dataset_toml(work)
    pipe = load_toy_pipeline()
    rows: dict[str, dict[str, list[float]]] = {}

    def add(label: str, scores: dict[str, float]) -> None:
        for k, v in scores.items():
            rows.setdefault(label, {}).setdefault(k, []).append(v)

    for subject in SUBJECTS:
        add(f"base model, {subject} panel", score(pipe, None, subject, args.images_per_prompt))
    for seed in range(args.seeds):
        both = train(work / f"both_s{seed}", seed, ["--dataset_config", str(toml)], 600)
        for subject in SUBJECTS:
            add(
                f"one adapter (circle + star, 600 steps), {subject} panel",
                score(pipe, both, subject, args.images_per_prompt),
            )
            alone = train(work / f"{subject}_s{seed}", seed, ["--instance_data_dir", str(get_subject(subject).path)],
                          300 if subject == "circle" else 600)  # fmt: skip
            add(f"{subject} alone ({300 if subject == 'circle' else 600} steps), {subject} panel",
                score(pipe, alone, subject, args.images_per_prompt))  # fmt: skip
        if seed == 0:
            grid(pipe, both)
    (work / "scores.json").write_text(json.dumps(rows, indent=1))
    metrics = ["subject_fidelity", "prompt_fidelity", "prior_preservation", "base_drift_accuracy"]
    order = sorted(rows, key=lambda k: (k.split(", ")[-1], not k.startswith("base"), not k.startswith("one")))
    table = markdown_table(
        ["adapter, panel", "subject fidelity", "prompt fidelity", "prior preservation", "ordinary prompts"],
        [[label] + [format_mean_ci(rows[label][m]) for m in metrics] for label in order],
    )
    both = [label for label in order if label.startswith("one adapter")]
    summary = ", ".join(f"{label.split(', ')[-1]}: subject {mean_ci95(rows[label]['subject_fidelity'])[0] * 100:.1f} %"
                        for label in both)  # fmt: skip
    body = (f"{args.seeds} seeds, {args.images_per_prompt} images per prompt; mean ± 95 % CI over seeds. "
            f"The two-concept adapter: {summary}.\n\n{table}\n\n![two concepts](images/{GRID.name})\n")  # fmt: skip
    append_section("Two concepts in one adapter (--dataset_config)", body, Path(args.docs))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
