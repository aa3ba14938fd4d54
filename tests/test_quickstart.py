"""The README's main job, shortened: train the bundled subject a few steps and draw the comparison grid."""

import pytest
from PIL import Image

from moslora_diffusion import toyworld

pytestmark = pytest.mark.skipif(
    not (toyworld.base_model_path() / "model_index.json").is_file(), reason="toy-world base model not bundled"
)


@pytest.mark.slow
def test_quickstart_writes_grid(tmp_path, capsys):
    from moslora_diffusion.cli import main
    from moslora_diffusion.quickstart import GRID_NAME, ORDINARY_PROMPTS, QUICKSTART_SEEDS

    out = tmp_path / "qs"
    assert main(["quickstart", "--max_train_steps", "3", "--output_dir", str(out)]) == 0
    grid = Image.open(out / GRID_NAME)
    prompts = [*toyworld.subject_info()["validation_prompts"], *ORDINARY_PROMPTS]
    # 2 x seeds cells of >= 128 px per row, one row per prompt (subject prompts, then the drift check)
    assert grid.width >= 2 * len(QUICKSTART_SEEDS) * 128
    assert grid.height >= len(prompts) * 128
    assert (out / "moslora_weights.safetensors").is_file()
    printed = capsys.readouterr().out
    assert str(out / GRID_NAME) in printed
    assert "step 3: subject fidelity" in printed  # the learning curve's points are shown as training goes
    assert (out / "quality_curve.png").is_file() and str(out / "quality_curve.png") in printed


@pytest.mark.slow
def test_quickstart_replaces_its_own_folder_but_not_a_named_one(tmp_path, monkeypatch, capsys):
    from moslora_diffusion.cli import main

    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a demo is re-run as is: outputs/quickstart is replaced
        assert main(["quickstart", "--max_train_steps", "2"]) == 0
    assert (tmp_path / "outputs" / "quickstart" / "moslora_weights.safetensors").is_file()
    named = ["quickstart", "--max_train_steps", "2", "--output_dir", str(tmp_path / "mine")]
    assert main(named) == 0
    capsys.readouterr()
    assert main(named) == 2  # a folder the user named keeps another run's work
    assert "holds another run's work" in capsys.readouterr().err
