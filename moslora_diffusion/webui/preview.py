"""A cheap live preview of the image being denoised: the latents mapped to colours by a linear map.

The map is fitted once per loaded model from its own VAE (no table of numbers per architecture): random
blocks of colour are encoded, and least squares finds the (latent channels + 1) x 3 matrix that best turns
each latent pixel into the colour of the image patch it came from. A preview then costs one small matrix
product per step, against a VAE decode (seconds per step on a CPU at 512 px).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LatentPreview"]

_FIT_IMAGES = 8  # colour fields encoded for the fit
_FIT_LATENT_SIDE = 16  # their size in latent pixels


class LatentPreview:
    """Turns the pipeline's (scaled) latents into a small RGB image; fitted on first use from ``vae``."""

    def __init__(self, vae: Any, scale_factor: int, seed: int = 0):
        self._vae, self._scale, self._seed = vae, int(scale_factor), seed
        self._map: Any = None  # (channels + 1, 3): the last row is the bias

    def _fit(self) -> Any:
        import torch
        import torch.nn.functional as F

        vae = self._vae
        side = _FIT_LATENT_SIDE * self._scale
        gen = torch.Generator().manual_seed(self._seed)
        coarse = torch.rand(_FIT_IMAGES, 3, 4, 4, generator=gen)
        # blocks with sharp edges, like objects on a background (fitted better than smooth fields on the toy model)
        images = F.interpolate(coarse, size=(side, side), mode="nearest")
        param = next(vae.parameters())
        with torch.inference_mode():
            dist = vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist
            latents = dist.mean.float().cpu() * float(vae.config.scaling_factor)
        target = F.adaptive_avg_pool2d(images, latents.shape[-2:])  # the colour each latent pixel covers
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)
        return torch.linalg.lstsq(x.double(), y.double()).solution.float()

    def __call__(self, latents: Any, size: tuple[int, int] | None = None) -> Any:
        """A PIL image of the first latent in ``latents`` (B, C, h, w), enlarged to ``size`` (nearest)."""
        import torch
        from PIL import Image

        if self._map is None:
            self._map = self._fit()
        lat = latents[0].detach().float().cpu()
        flat = lat.permute(1, 2, 0).reshape(-1, lat.shape[0])
        rgb = torch.cat([flat, torch.ones(len(flat), 1)], dim=1) @ self._map
        pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).reshape(lat.shape[1], lat.shape[2], 3)
        image = Image.fromarray(pixels.numpy(), "RGB")
        return image.resize(size, 0) if size else image  # 0 = nearest neighbour
