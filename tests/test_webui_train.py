"""The Train tab's job on the real training code: a few steps on the tiny base model, progress reported,
the adapter lands in the adapters folder and generates right away (native MoSLoRA file included)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.webui_support import make_tiny_setup

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("moslora_diffusion.training") is None
        or importlib.util.find_spec("moslora_diffusion.loading") is None,
        reason="needs moslora_diffusion.training and moslora_diffusion.loading",
    ),
]


def _subject(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (48, 48), (30 + 60 * i, 200, 90))
        ImageDraw.Draw(im).ellipse((6, 6, 40, 40), fill=(200, 20, 20 * i))
        paths.append(folder / f"subject{i}.jpg")
        im.save(paths[-1])
    return [str(p) for p in paths]


@pytest.mark.parametrize("kind", ["moslora", "lora"])
def test_train_job_end_to_end(tmp_path, kind):
    from moslora_diffusion.webui.engine import Engine, GenerationRequest
    from moslora_diffusion.webui.jobs import TrainingJobs, TrainRequest

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    jobs = TrainingJobs(
        str(setup["base"]), setup["adapters"], tmp_path / "work", sampler_defaults={"steps": 2}
    )
    req = TrainRequest(
        images=_subject(tmp_path / "upload"),
        instance_prompt="a sks blob",
        adapter_name=f"blob-{kind}",
        steps=4,
        rank=4,
        learning_rate=1e-3,
        adapter=kind,
        resolution=32,
        validation_every=2,
    )
    jobs.start(req)
    st = jobs.wait(600)
    assert st.state == "done", st.message
    assert st.step == 4 and st.max_steps == 4 and len(st.losses) == 4
    assert all(np.isfinite(loss) for _, loss in st.losses)
    assert st.preview is not None
    # the learning signals at step 0 and every validation, for the Train tab's live curves
    assert [step for step, _ in st.signals] == [0, 2, 4]
    from moslora_diffusion.webui.tab_train import signals_frame

    frame = signals_frame(st.signals)
    fit = frame[frame["signal"] == "subject fit / start"]["value"].tolist()
    assert fit[0] == 1.0 and len(fit) == 3 and all(np.isfinite(fit))
    name = f"blob-{kind}.safetensors"
    assert st.adapter_name == name and name in engine.list_adapters()
    info = engine.adapter_info(name)
    assert info["rank"] == 4
    # one describer for every file kind: a plain LoRA trained here still names its base model and prompt
    assert info["kind"] == ("moslora" if kind == "moslora" else "diffusers")
    assert (
        info["architecture"] == engine.architecture and info["prompt"] == "a sks blob" and info["steps"] == 4
    )
    common = {"prompt": "a sks blob", "steps": 2, "width": 32, "height": 32, "seed": 3}
    base = np.asarray(engine.generate(GenerationRequest(**common))[0].image, dtype=np.int16)
    tuned = engine.generate(GenerationRequest(**common, adapters=[(name, 1.0)]))[0]
    assert "Adapters: " in tuned.parameters
    assert np.abs(base - np.asarray(tuned.image, dtype=np.int16)).max() > 0
