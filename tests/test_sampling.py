"""Drawing with fixed seeds (`moslora_diffusion.sampling`): requests with one sampler setting share pipeline
calls, an image does not depend on what it was batched with, and the order comes back as asked."""

from __future__ import annotations

import numpy as np
import pytest

from moslora_diffusion.sampling import SampleRequest, draw


class CountingPipe:
    """Forwards to a real pipeline and records the batch size of every call."""

    def __init__(self, pipe):
        self.pipe, self.batches = pipe, []

    def __call__(self, **kwargs):
        self.batches.append(len(kwargs["prompt"]))
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def toy_pipe():
    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline

    return load_toy_pipeline()


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_same_setting_shares_a_call_and_images_do_not_depend_on_the_batch(toy_pipe):
    red = SampleRequest(("a red circle on a blue background",) * 2, (1, 2), 4, 5.0, 32, 32)
    green = SampleRequest(("a green square on a white background",), (3,), 4, 5.0, 32, 32)
    other = SampleRequest(("a red circle on a blue background",), (1,), 3, 5.0, 32, 32)
    pipe = CountingPipe(toy_pipe)
    together = draw(pipe, [red, other, green])
    assert sorted(pipe.batches) == [1, 3]  # red + green in one call; other's step count differs
    assert [len(x) for x in together] == [2, 1, 1]
    alone = draw(toy_pipe, [red])[0]
    # the same pictures up to float rounding of another batch size (8-bit pixels: one level at most)
    assert np.abs(pixels(together[0]) - pixels(alone)).max() <= 1
    assert np.abs(pixels(together[2]) - pixels(draw(toy_pipe, [green])[0])).max() <= 1
    # the seed decides the picture: seed 1 at 4 steps is red's first image, not its second
    first = draw(toy_pipe, [SampleRequest(red.prompts[:1], (1,), 4, 5.0, 32, 32)])[0]
    assert np.abs(pixels(first) - pixels(alone[:1])).max() <= 1
    assert np.abs(pixels(alone[:1]) - pixels(alone[1:])).max() > 10


def test_max_batch_splits_calls(toy_pipe):
    req = SampleRequest(("a red circle on a blue background",) * 5, tuple(range(5)), 2, 5.0, 32, 32)
    pipe = CountingPipe(toy_pipe)
    sizes = []
    images = draw(pipe, [req], max_batch=2, progress=sizes.append)[0]
    assert pipe.batches == [2, 2, 1] and sizes == [2, 2, 1] and len(images) == 5


def test_prompts_and_seeds_must_pair():
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        SampleRequest(("a", "b"), (1,), 4, 5.0, 32, 32)
