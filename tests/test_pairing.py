"""Pairing two eval-toyworld studies seed by seed (compare-toyworld): hand-computed differences, refusals."""

import json

import pytest

from moslora_diffusion.errors import StudyError
from moslora_diffusion.toyworld import scoring
from moslora_diffusion.yardstick import config as study
from moslora_diffusion.yardstick import pairing, report, runs


def _study(tmp_path, name, methods, values, config=None, rank=8):
    """A results.json whose method ``m`` scores ``values[m][seed]`` on every metric."""
    runs = [
        {"method": m, "seed": s, **{k: v for k in scoring.METRICS}}
        for m in methods
        for s, v in values[m].items()
    ]
    cfg = {"rank": rank, "subject": "star", "images_per_prompt": 4, "quick": False, "extra_train_args": {}}
    cfg.update(config or {})
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"runs": runs, "methods": methods, "config": cfg}))
    return folder


def test_differences_are_per_seed_and_only_at_shared_seeds(tmp_path):
    a = _study(tmp_path, "orth", ["MoSLoRA r=8"], {"MoSLoRA r=8": {0: 0.75, 1: 0.5, 2: 0.25, 3: 1.0}},
               config={"extra_train_args": {"mixer_init": "orthogonal"}})  # fmt: skip
    b = _study(tmp_path, "main", ["MoSLoRA r=8", "LoRA r=8"],
               {"MoSLoRA r=8": {0: 0.5, 1: 0.5, 2: 0.0}, "LoRA r=8": {0: 1.0, 1: 0.25, 2: 0.5}})  # fmt: skip
    got = pairing.compare_studies(pairing.load_study(a), pairing.load_study(b), None, "lora")
    assert got["b"]["method"] == "LoRA r=8" and got["seeds"] == [0, 1, 2]  # seed 3 has no partner
    # A - B per seed: -0.25, +0.25, -0.25 -> mean -1/12, sd 0.2887, t(2) = 4.303 -> half-width 71.7 points
    assert got["differences"]["subject_fidelity"] == pytest.approx([-0.25, 0.25, -0.25])
    table = pairing.comparison_table(got)
    assert "| A − B, paired (3 seeds) | -8.3 ± 71.7 |" in table
    assert "| A: MoSLoRA r=8 | 50.0 ± 62.1 |" in table  # A at the shared seeds only (0.75, 0.5, 0.25)
    assert "--mixer_init: orthogonal vs recipe" in table


def test_one_study_pairs_the_same_way_as_its_own_paired_table(tmp_path):
    vals = {"MoSLoRA r=8": {0: 0.6, 1: 0.7, 2: 0.8}, "LoRA r=16": {0: 0.5, 1: 0.5, 2: 0.7}}
    folder = _study(tmp_path, "s", ["MoSLoRA r=8", "LoRA r=16"], vals)
    study = pairing.load_study(folder / "results.json")
    table = pairing.comparison_table(pairing.compare_studies(study, study, "moslora", "lora-2r"))
    assert "| A − B, paired (3 seeds) | 13.3 ± 14.3 |" in table
    assert "| MoSLoRA r=8 − LoRA r=16 (3 seeds) | 13.3 ± 14.3 |" in report.paired_table(study)


def test_refuses_what_cannot_be_paired(tmp_path):
    vals = {"MoSLoRA r=8": {0: 0.5, 1: 0.5}}
    a = pairing.load_study(_study(tmp_path, "a", ["MoSLoRA r=8"], vals))
    with pytest.raises(StudyError, match="with itself"):
        pairing.compare_studies(a, a)
    with pytest.raises(StudyError, match="no method 'lora'; it has 'MoSLoRA r=8'"):
        pairing.compare_studies(a, a, "moslora", "lora")
    more = pairing.load_study(_study(tmp_path, "b", ["MoSLoRA r=8"], vals, config={"images_per_prompt": 8}))
    with pytest.raises(StudyError, match="images_per_prompt: 4 vs 8"):
        pairing.compare_studies(a, more)
    circle = pairing.load_study(_study(tmp_path, "c", ["MoSLoRA r=8"], vals, config={"subject": "circle"}))
    with pytest.raises(StudyError, match="subject: 'star' vs 'circle'"):
        pairing.compare_studies(a, circle)
    other_seeds = pairing.load_study(
        _study(tmp_path, "d", ["MoSLoRA r=8"], {"MoSLoRA r=8": {5: 0.1, 6: 0.2}})
    )
    with pytest.raises(StudyError, match="share 0 seed"):
        pairing.compare_studies(a, other_seeds)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(StudyError, match="no such file"):
        pairing.load_study(tmp_path / "nowhere")
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(StudyError, match="not an eval-toyworld results.json"):
        pairing.load_study(bad)
    bad.write_text(json.dumps({"runs": [{"method": "A", "seed": 0}], "methods": ["A"], "config": {}}))
    with pytest.raises(StudyError, match="run 0 has no 'subject_fidelity'"):
        pairing.load_study(tmp_path)
    run = {"method": "A", "seed": 0, **{k: 0.5 for k in scoring.METRICS}}
    bad.write_text(
        json.dumps({"runs": [{**run, "prior_preservation": "high"}], "methods": ["A"], "config": {}})
    )
    with pytest.raises(StudyError, match="run 0: 'prior_preservation' is not a number"):
        pairing.load_study(bad)
    bad.write_text(json.dumps({"runs": [run], "methods": [], "config": {}}))
    with pytest.raises(StudyError, match="must be lists"):
        pairing.load_study(bad)


def test_cli_prints_the_table_and_fails_cleanly(tmp_path, capsys):
    from moslora_diffusion.cli import main

    vals = {"MoSLoRA r=8": {0: 0.5, 1: 1.0}, "LoRA r=8": {0: 0.25, 1: 0.75}}
    folder = _study(tmp_path, "s", ["MoSLoRA r=8", "LoRA r=8"], vals)
    assert main(["compare-toyworld", str(folder), str(folder), "--method_b", "LoRA r=8"]) == 0
    assert "| A − B, paired (2 seeds) | 25.0 ± 0.0 |" in capsys.readouterr().out
    assert main(["compare-toyworld", str(folder), str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_learning_curves_do_not_change_the_trained_adapter(tmp_path):
    """Studies with and without --curves pair seed by seed only if scoring during training leaves training
    alone: the adapter trained with curves is bit-identical to the one without."""
    import dataclasses

    from safetensors.torch import load_file

    cfg = study.BenchConfig.smoke_config(subject="star", curve_every=2)
    plain, _ = runs.train_adapter("moslora", 4, 3, tmp_path / "plain", cfg)
    curved, curve = runs.train_adapter(
        "moslora", 4, 3, tmp_path / "curved", dataclasses.replace(cfg, curves=True), curve=True
    )
    assert [p["step"] for p in curve] == [2, 4]
    a, b = load_file(plain), load_file(curved)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cli_docs_appends_the_table_with_its_command(tmp_path, monkeypatch):
    from moslora_diffusion.cli import main

    docs = tmp_path / "docs" / "quality.md"
    vals = {"MoSLoRA r=8": {0: 0.5, 1: 1.0}, "LoRA r=8": {0: 0.25, 1: 0.75}}
    folder = _study(tmp_path, "s", ["MoSLoRA r=8", "LoRA r=8"], vals)
    monkeypatch.setattr(
        "sys.argv",
        [
            "moslora-diffusion",
            "compare-toyworld",
            str(folder),
            str(folder),
            "--method_b",
            "lora",
            "--docs",
            str(docs),
        ],
    )
    assert (
        main(["compare-toyworld", str(folder), str(folder), "--method_b", "lora", "--docs", str(docs)]) == 0
    )
    text = (tmp_path / "docs" / "quality.md").read_text()
    assert "## Toy-world paired comparison (compare-toyworld)" in text
    assert (
        f"- Command: `moslora-diffusion compare-toyworld {folder} {folder} --method_b lora --docs {docs}`"
        in text
    )
    assert "| A − B, paired (2 seeds) | 25.0 ± 0.0 |" in text
