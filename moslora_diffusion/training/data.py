"""DreamBooth data: finding and reading images, captions, preprocessing and the sample order.

Captions: `--instance_prompt` for every image, replaced by a `.txt` file beside an image, replaced in turn
by a `metadata.jsonl` line (`{"file_name": ..., "text": ...}`) in the instance folder.
The sample order is a pure function of (seed, position), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from ..errors import TrainConfigError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_NAME = "metadata.jsonl"


@dataclass
class ImageSet:
    """Readable images of a folder with their captions, plus what was skipped and why."""

    paths: list[Path]
    captions: list[str | None]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files (by extension) directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied, transparency composited on white, grey expanded."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
    if im.mode in _WIDE_MODES:
        im = _to_eight_bits(im, path)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


# Pillow's one-channel modes wider than 8 bits: 16-bit PNGs open as I;16 (or I), which convert("RGB") clips
# to 255 instead of scaling (mid-grey became white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_eight_bits(im: Image.Image, path: str | Path) -> Image.Image:
    import numpy as np

    values = np.asarray(im, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise TrainConfigError(
            f"{path}: {im.mode} pixels from {values.min()} to {values.max()} are outside 16-bit range; "
            "save it as an 8- or 16-bit image"
        )
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def check_image(path: str | Path) -> None:
    """Raise if `path` is not a readable image; reads the header and checksums, decodes no pixels."""
    with Image.open(path) as im:
        im.verify()


def read_text(path: Path) -> str:
    """A caption or metadata file as text: UTF-8 (a byte-order mark is fine); anything else is named."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise TrainConfigError(
            f"{path}: not UTF-8 text{hint}: {exc.reason} at byte {exc.start}; save it as UTF-8"
        ) from None
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_metadata(folder: Path) -> dict[str, str]:
    path = folder / METADATA_NAME
    if not path.is_file():
        return {}
    captions: dict[str, str] = {}
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TrainConfigError(
                f"{path}, line {n}: expected a JSON object with 'file_name' and 'text' ({exc})"
            ) from None
        if not isinstance(text, str) or not isinstance(name, str):
            raise TrainConfigError(f"{path}, line {n}: 'file_name' and 'text' must be strings")
        captions[Path(name).name] = text.strip()
    return captions


def scan_images(
    folder: str | Path, default_caption: str | None = None, caption_extension: str = ".txt"
) -> ImageSet:
    """Check every image of `folder` (headers, no decoding); unreadable files go to `.unreadable`, not raised.

    Training decodes each image once, later (`load_image`); preflight only needs to know they are images.
    A `metadata.jsonl` row naming a file that is not an image of the folder is an error (a caption that
    would silently go nowhere).
    """
    folder = Path(folder)
    metadata = _read_metadata(folder)
    files = list_image_files(folder)
    orphans = sorted(set(metadata) - {p.name for p in files})
    if orphans:
        raise TrainConfigError(
            f"{folder / METADATA_NAME}: rows name files that are not images in {folder}: "
            + ", ".join(orphans[:5])
            + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        )
    paths, captions, unreadable = [], [], []
    for path in files:
        try:
            check_image(path)
        except Exception as exc:  # PIL raises many types for broken files
            unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        caption = metadata.get(path.name)
        if caption is None and path.with_suffix(caption_extension).is_file():
            caption = read_text(path.with_suffix(caption_extension)).strip() or None
        paths.append(path)
        captions.append(caption if caption is not None else default_caption)
    return ImageSet(paths, captions, unreadable)


def check_instance_data(
    folder: str | None,
    instance_prompt: str | None,
    *,
    caption_extension: str = ".txt",
    where: str = "--instance_data_dir",
    no_caption: str = "--instance_prompt is required",
) -> ImageSet:
    """The instance images with captions; raises `TrainConfigError` when nothing usable is there.

    ``where`` names the folder's setting in messages (a dataset file's subset, or the flag), ``no_caption``
    what is missing when an image has no caption."""
    if not folder:
        raise TrainConfigError(
            f"{where} is required (the bundled toy-world subject is used only with the bundled base model)"
        )
    p = Path(folder)
    if not p.exists():
        raise TrainConfigError(f"{where}: {folder} does not exist")
    if not p.is_dir():
        raise TrainConfigError(f"{where}: {folder} is not a folder")
    if not list_image_files(p):
        raise TrainConfigError(f"{where}: {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    images = scan_images(p, instance_prompt, caption_extension)
    if images.unreadable:
        listing = "; ".join(f"{path.name} ({why})" for path, why in images.unreadable)
        if not images.paths:
            raise TrainConfigError(f"{where}: no readable images in {folder}: {listing}")
        logger.warning("skipping %d unreadable image(s) in %s: %s", len(images.unreadable), folder, listing)
    missing = [path.name for path, cap in zip(images.paths, images.captions) if not cap]
    if missing:
        raise TrainConfigError(
            f"{no_caption}: no caption for {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return images


# ----------------------------------------------------------------------------- preprocessing


@dataclass
class Example:
    """One preprocessed training image."""

    pixels: torch.Tensor  # [3, H, W] in [-1, 1]
    caption: str
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL's time ids
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target_size: tuple[int, int] = (0, 0)  # (height, width) trained at (the bucket)


def augmentation_generator(seed: int, position: int, salt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, stream position): same crops/flips after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + position * 7919 + salt) % (2**63 - 1))


def _target(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (
        (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    )


def _covering_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of an image of ``size`` resized, aspect kept, to just cover ``target`` (w, h)."""
    (w, h), (tw, th) = size, target
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def crop_is_random(
    size: tuple[int, int], center_crop: bool, resolution: int | tuple[int, int] | None = None
) -> bool:
    """Whether cropping an image of `size` (w, h) to `resolution` (a side, or (w, h); default: a square)
    can vary between epochs."""
    if center_crop:
        return False
    if resolution is None:
        return size[0] != size[1]
    target = _target(resolution)
    return _covering_size(size, target) != target


def preprocess(
    image: Image.Image,
    caption: str,
    resolution: int | tuple[int, int],
    center_crop: bool,
    random_flip: bool,
    generator: torch.Generator | None,
) -> Example:
    """Resize to cover `resolution` (a square side, or a bucket's (w, h)), crop (centre or random), maybe
    flip, normalise."""
    w, h = image.size
    tw, th = _target(resolution)
    new_w, new_h = _covering_size((w, h), (tw, th))
    if center_crop or generator is None:
        top, left = (new_h - th) // 2, (new_w - tw) // 2
    else:
        top = int(torch.randint(0, new_h - th + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - tw + 1, (1,), generator=generator))
    if (new_w, new_h) == (w, h):
        image = image.crop((left, top, left + tw, top + th))
    else:  # resize only the part that is kept: a 1x4000 image must not become a 512x2,048,000 one first
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
        image = image.resize((tw, th), Image.Resampling.BILINEAR, box=box)
    if random_flip and generator is not None and float(torch.rand((), generator=generator)) < 0.5:
        image = ImageOps.mirror(image)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = data.view(th, tw, 3).permute(2, 0, 1).float() / 127.5 - 1.0
    return Example(pixels, caption, (h, w), (top, left), (th, tw))


# ----------------------------------------------------------------------------- sample order


@dataclass
class SampleOrder:
    """The infinite stream of dataset indices: one seeded permutation per epoch, concatenated.

    Micro-batch `u` (counted over the whole run) takes stream positions [u*G, (u+1)*G) with
    G = batch size x processes; process `rank` takes its `batch_size` slice of those.
    """

    num_examples: int
    batch_size: int
    num_processes: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    def epoch_permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + 104729 * (epoch + 1))
        return torch.randperm(self.num_examples, generator=g).tolist()

    def positions(self, micro_batch: int, rank: int) -> list[int]:
        start = micro_batch * self.global_batch + rank * self.batch_size
        return list(range(start, start + self.batch_size))

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_examples)
        return self.epoch_permutation(epoch)[offset]

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch)

    def items(self, micro_batch: int, rank: int) -> list[tuple[int, int]]:
        """(example index, stream position) of this process's examples of ``micro_batch``."""
        return [(self.index_at(p), p) for p in self.positions(micro_batch, rank)]
