"""Latents in and out of the autoencoder: the one place where pixels become the latents a UNet is trained on and
sampled in, used by the pipelines (text-to-image decodes, img2img/inpainting encode) and by training (which
encodes every batch, or caches q(z | x) and samples from it), so that anyone can check by reading one file that
training and inference treat latents alike.

Rombach et al. 2022 (arXiv 2112.10752), Sec. 4.3.2: the diffusion model sees z = (E(x) - shift) · scaling_factor,
E(x) a sample of the VAE posterior q(z | x), scaled to roughly unit variance. SD 1/2 VAEs have no shift; SD3 / Flux
ones do. Both numbers live in the VAE's config, where diffusers' pipelines read them.
"""

from __future__ import annotations

import torch


def vae_scale_factor(vae) -> int:
    """How many pixels one latent pixel covers along each side: 2 ** (number of VAE blocks - 1), from an
    `AutoencoderKL` or its config (8 for SD's VAE; diffusers' pipelines use 8 when there is no VAE)."""
    if vae is None:
        return 8
    config = getattr(vae, "config", vae)
    blocks = config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels
    return 2 ** (len(blocks) - 1)


def latent_shift(vae_config) -> float | None:
    """The VAE's latent shift, or None. diffusers' `AutoencoderKL` calls the key `shift_factor`; `shifting_factor`
    is accepted too, for configs written by hand under that name."""
    for key in ("shift_factor", "shifting_factor"):
        value = getattr(vae_config, key, None)
        if value is not None:
            return float(value)
    return None


def normalize_latents(z: torch.Tensor, vae_config) -> torch.Tensor:
    """A VAE posterior sample z → the UNet's latents (z - shift) · scaling_factor."""
    shift = latent_shift(vae_config)
    if shift is not None:
        z = z - shift
    return z * vae_config.scaling_factor


def denormalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """The UNet's latents → what the VAE decoder takes: latents / scaling_factor + shift."""
    z = latents / vae_config.scaling_factor
    shift = latent_shift(vae_config)
    if shift is not None:
        z = z + shift
    return z


def encode_latents(
    vae,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] (NCHW) → normalised latents of a sample of q(z | x). The sample is mean + std · ε with ε
    from `generator` (diffusers' `latent_dist.sample`, as its img2img pipelines draw it) or given as `noise`
    (training draws one ε per example from that example's own generator). `dtype`: normalise in it (training
    keeps float32 latents when the frozen VAE runs in bf16/fp16)."""
    posterior = vae.encode(images).latent_dist
    if noise is None:
        z = posterior.sample(generator)
    else:
        z = posterior.mean + posterior.std * noise.to(posterior.mean)
    return normalize_latents(z if dtype is None else z.to(dtype), vae.config)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents → images in [-1, 1] (NCHW), through the VAE decoder."""
    return vae.decode(denormalize_latents(latents, vae.config), return_dict=False)[0]
