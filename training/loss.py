"""Training objectives: the diffusion loss (Ho et al. 2020, Algorithm 1 / Eq. 14) with its prediction targets and
min-SNR-γ weighting, and the KL-regularised autoencoder loss of the latent diffusion paper's first stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), the signal-to-noise ratio of q(x_t | x_0) (Eq. 4)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return alphas_cumprod / (1.0 - alphas_cumprod)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict, per the scheduler's `prediction_type`:
    ε (Eq. 14), x_0, or v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022, arXiv 2202.00512)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"`prediction_type`: {prediction_type!r}; choose one of 'epsilon', 'v_prediction', 'sample'.")


def min_snr_weights(snr: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, arXiv 2303.09556, Eq. 7 and Sec. 3.4).

    The paper's weight on the x_0-space error is min(SNR, γ). Each prediction type's MSE already carries an implicit
    weight relative to x_0-space (ε-MSE = SNR · x_0-MSE, v-MSE = (SNR + 1) · x_0-MSE), so we divide it out:
        epsilon: min(SNR, γ) / SNR,   v_prediction: min(SNR, γ) / (SNR + 1),   sample: min(SNR, γ).
    """
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        # At zero terminal SNR, min(SNR, γ) / SNR → 1 as SNR → 0; define it so instead of 0/0.
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"`prediction_type`: {prediction_type!r}; choose one of 'epsilon', 'v_prediction', 'sample'.")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    snr_gamma: float | None = None,
    is_prior: torch.Tensor | None = None,
    prior_loss_weight: float = 1.0,
) -> torch.Tensor:
    """Mean squared error between prediction and target (L_simple, Eq. 14), optionally min-SNR-γ weighted per
    sample. Computed in float32 whatever the autocast dtype, so bf16/fp16 runs don't lose the loss's precision.

    `is_prior` marks a batch's class images under DreamBooth's prior preservation (training/dreambooth.py): the loss
    is then L_instance + λ · L_prior, each the mean over its own examples (Ruiz et al. 2023, arXiv 2208.12242,
    Eq. 2, as diffusers' train_dreambooth.py), λ = `prior_loss_weight`."""
    per_element = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    if snr_gamma is None and is_prior is None:
        return per_element.mean()
    per_sample = per_element.mean(dim=list(range(1, per_element.ndim)))
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(compute_snr(scheduler, timesteps), snr_gamma,
                                                  scheduler.config.prediction_type)  # fmt: skip
    if is_prior is None:
        return per_sample.mean()
    is_prior = is_prior.to(per_sample.device)
    return per_sample[~is_prior].mean() + prior_loss_weight * per_sample[is_prior].mean()


def vae_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, posterior, kl_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-stage objective of latent diffusion (Rombach et al. 2022, arXiv 2112.10752, Sec. 3 and App. G):
    a pixel reconstruction term plus a small KL(q(z|x) || N(0, I)) that keeps the latent space well scaled.
    We use L1 for reconstruction (sharper than L2 on flat synthetic colours) and omit the paper's perceptual and
    adversarial terms, which need pretrained networks we cannot download.

    Returns (total, reconstruction, kl), each a scalar.
    """
    reconstruction_loss = F.l1_loss(reconstruction.float(), target.float())
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element, so kl_weight is size-independent
    return reconstruction_loss + kl_weight * kl, reconstruction_loss, kl
