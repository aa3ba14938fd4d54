"""Each private API of PEFT / accelerate we use, through `moslora_diffusion.compat`: it works with the installed
versions, and a version without it fails loudly, naming the library and the missing piece."""

from __future__ import annotations

import pytest
from torch import nn

from moslora_diffusion import compat
from moslora_diffusion.errors import LibraryVersionError


def test_custom_lora_layers_are_registered_with_peft():
    from peft import LoraConfig, get_peft_model

    from moslora_diffusion import MoSLoraConfig
    from moslora_diffusion.layer import MoSLoraLinear

    model = get_peft_model(nn.Sequential(nn.Linear(8, 8)), MoSLoraConfig(r=2, target_modules=["0"]))
    assert isinstance(model.base_model.model[0], MoSLoraLinear)
    plain = LoraConfig(r=2, target_modules=["0"])
    with pytest.raises(LibraryVersionError, match=r"peft .* has no .*\._register_custom_module"):
        compat.register_custom_lora_layers(object(), {nn.Linear: MoSLoraLinear})
    compat.register_custom_lora_layers(plain, {nn.Linear: MoSLoraLinear})  # the real one accepts it


def test_accelerate_state_is_reset_for_the_next_run(monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    Accelerator(cpu=True, gradient_accumulation_steps=3)
    assert GradientState().num_steps == 3
    compat.reset_accelerate_state()
    assert AcceleratorState._shared_state == {} and GradientState._shared_state == {}
    monkeypatch.delattr(GradientState, "_reset_state")
    with pytest.raises(LibraryVersionError, match=r"accelerate .* has no GradientState\._reset_state"):
        compat.reset_accelerate_state()
