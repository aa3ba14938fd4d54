"""The diffusion training objective: noising, the prediction target, Min-SNR weighting, prior loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import TrainConfigError


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise like `latents`; with an offset, plus a per-channel constant (brighter/darker images)."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, device=generator.device).to(latents)
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(
        0, num_train_timesteps, (batch,), generator=generator, device=generator.device
    ).long()


def prediction_target(
    scheduler, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should output: the noise (epsilon), the velocity (v_prediction) or the clean latents."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise TrainConfigError(f"unsupported prediction_type {prediction_type!r}")


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), expressed for the given prediction target.

    The clean-sample loss is weighted by min(SNR, gamma); an epsilon loss equals SNR times it, a
    velocity loss (SNR + 1) times it, so those divide by SNR or SNR + 1.
    """
    s = snr(alphas_cumprod, timesteps)
    clipped = torch.clamp(s, max=gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def per_example_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example, computed in fp32."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)


def dreambooth_loss(
    per_example: torch.Tensor, num_instance: int, prior_loss_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(total loss, prior loss or None): instance examples first, class examples after them."""
    instance = per_example[:num_instance].mean()
    if per_example.shape[0] == num_instance:
        return instance, None
    prior = per_example[num_instance:].mean()
    return instance + prior_loss_weight * prior, prior
