"""Aspect-ratio bucketing: which size each training image is trained at, and batches drawn within one size.

Buckets hold about ``resolution²`` pixels with sides that are multiples of ``step`` between ``min_side`` and
``max_side``; an image goes to the bucket whose aspect ratio is closest to its own (the larger bucket on a
tie), is resized to cover it and cropped to it. With ``no_upscale`` an image is never enlarged: one no
larger than ``resolution²`` pixels gets a bucket of its own size rounded down to ``step``, a larger one is
scaled down to about ``resolution²`` pixels first.

:class:`BucketOrder` is the sample order with buckets: a pure function of (seed, micro-batch), like
`data.SampleOrder`, so that a resumed run draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TrainConfigError

__all__ = ["bucket_sizes", "choose_bucket", "assign_buckets", "BucketOrder", "histogram"]

Size = tuple[int, int]  # (width, height)


def bucket_sizes(resolution: int, step: int, min_side: int, max_side: int) -> list[Size]:
    """Every (width, height) with sides multiples of ``step`` in [min_side, max_side] and the largest
    height that keeps the area within ``resolution²`` for each width (and the transposed sizes)."""
    area = resolution * resolution
    sizes: set[Size] = set()
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (area // width) // step * step)
        if height >= min_side:
            sizes.update({(width, height), (height, width)})
    if not sizes:
        raise ValueError(f"no bucket with sides in [{min_side}, {max_side}] fits {resolution}² pixels")
    return sorted(sizes)


def choose_bucket(
    image_size: Size, sizes: list[Size], resolution: int, step: int, no_upscale: bool = False
) -> Size:
    """The bucket of an image of ``image_size`` (width, height)."""
    w, h = image_size
    if no_upscale:
        scale = min(1.0, math.sqrt(resolution * resolution / (w * h)))
        return max(step, int(w * scale) // step * step), max(step, int(h * scale) // step * step)
    ratio = math.log(w / h)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def assign_buckets(
    image_sizes: list[Size],
    resolution: int,
    step: int,
    min_side: int | None = None,
    max_side: int | None = None,
    no_upscale: bool = False,
) -> list[Size]:
    """The bucket of each image; side limits default to half and twice ``resolution`` (rounded to ``step``)."""
    low = min_side or max(step, resolution // 2 // step * step)
    high = max_side or max(low, resolution * 2 // step * step)
    sizes = bucket_sizes(resolution, step, low, high)
    return [choose_bucket(s, sizes, resolution, step, no_upscale) for s in image_sizes]


def buckets_for(cfg: Any, image_sizes: list[Size], resolution: int) -> list[Size]:
    """:func:`assign_buckets` with the training flags of ``cfg``; settings that leave no bucket are a
    `TrainConfigError` (preflight calls it with no images once the resolution is known)."""
    try:
        return assign_buckets(image_sizes, resolution, cfg.bucket_step, cfg.min_bucket_side,
                              cfg.max_bucket_side, cfg.bucket_no_upscale)  # fmt: skip
    except ValueError as exc:
        raise TrainConfigError(
            f"--bucket: {exc} (resolution {resolution}, --bucket_step {cfg.bucket_step}, "
            "--min_bucket_side / --max_bucket_side); use a smaller --bucket_step"
        ) from None


def histogram(buckets: list[Size]) -> str:
    """One line per bucket, largest group first: ``  512x768: 5 images``."""
    counts = Counter(buckets)
    return "\n".join(
        f"  {w}x{h}: {n} image{'s' if n != 1 else ''}"
        for (w, h), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )


@dataclass
class BucketOrder:
    """The sample order with buckets: per epoch, each bucket's examples in a seeded order, cut into global
    batches (the last one of a bucket filled up from the same bucket's start), the batches shuffled.

    ``buckets[i]`` is the bucket of example ``i``. Global batch ``u`` gives process ``rank`` the slice
    ``[rank*batch_size, (rank+1)*batch_size)``; every process of one step therefore trains at one size.
    """

    buckets: list[Size]
    batch_size: int
    num_processes: int
    seed: int
    _cache: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    def _groups(self) -> dict[Size, list[int]]:
        groups: dict[Size, list[int]] = {}
        for i, b in enumerate(self.buckets):
            groups.setdefault(b, []).append(i)
        return dict(sorted(groups.items()))

    def micro_batches_per_epoch(self) -> int:
        return sum(math.ceil(len(m) / self.global_batch) for m in self._groups().values())

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed + 104729 * (epoch + 1))
            batches: list[list[int]] = []
            for members in self._groups().values():
                shuffled = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
                n = math.ceil(len(shuffled) / self.global_batch) * self.global_batch
                filled = [shuffled[j % len(shuffled)] for j in range(n)]
                batches += [filled[i : i + self.global_batch] for i in range(0, n, self.global_batch)]
            order = torch.randperm(len(batches), generator=g).tolist()
            self._cache = {epoch: [batches[i] for i in order]}  # one epoch kept: memory stays flat
        return self._cache[epoch]

    def items(self, micro_batch: int, rank: int) -> list[tuple[int, int]]:
        """(example index, stream position) of this process's share of global batch ``micro_batch``."""
        epoch, k = divmod(micro_batch, self.micro_batches_per_epoch())
        batch = self.epoch_batches(epoch)[k]
        start = rank * self.batch_size
        return [
            (batch[start + i], micro_batch * self.global_batch + start + i) for i in range(self.batch_size)
        ]
