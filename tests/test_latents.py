"""pipelines/latents.py: one normalisation of latents for training and sampling. Training's latents (from the VAE or
from its cache) are `encode_latents`' with the same ε, and the pipelines' decoding undoes exactly that."""

from __future__ import annotations

import pytest
import torch
from accelerate import PartialState

from pipelines.latents import (
    decode_latents,
    denormalize_latents,
    encode_latents,
    latent_shift,
    normalize_latents,
    vae_scale_factor,
)
from training.train import batch_latents


@pytest.fixture
def vae(components):
    vae = components["vae"]
    vae.register_to_config(scaling_factor=0.37, shift_factor=0.11)
    return vae


def test_scale_factor_from_a_model_a_config_or_nothing(vae):
    assert vae_scale_factor(vae) == vae_scale_factor(vae.config) == vae_scale_factor(dict(vae.config)) == 2
    assert vae_scale_factor(None) == 8  # diffusers' pipelines assume SD's VAE without one


def test_normalisation_round_trips_with_and_without_shift(vae):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latents = normalize_latents(z, vae.config)
    assert torch.allclose(latents, (z - 0.11) * 0.37)
    assert torch.allclose(denormalize_latents(latents, vae.config), z, atol=1e-6)
    vae.register_to_config(shift_factor=None)
    assert latent_shift(vae.config) is None and torch.equal(normalize_latents(z, vae.config), z * 0.37)


def test_training_latents_are_the_pipelines_latents(vae):
    """batch_latents (training, with and without a cache) draws ε per example from its generator and gives exactly
    encode_latents(vae, pixels, noise=ε), the function img2img encodes with."""
    PartialState()
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    generators = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    eps = torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators()])
    with torch.no_grad():
        expected = encode_latents(vae, pixels, noise=eps)
        posterior = vae.encode(pixels).latent_dist
    batch = {"pixel_values": pixels, "indices": [0, 1, 2]}
    from_vae = batch_latents(batch, vae, None, generators(), torch.float32)
    cache = {i: (posterior.mean[i], posterior.std[i]) for i in range(3)}
    from_cache = batch_latents(batch, vae, cache, generators(), torch.float32)
    assert torch.equal(from_vae, expected) and torch.allclose(from_cache, expected, atol=1e-6)
    # And decoding inverts the normalisation before the decoder.
    with torch.no_grad():
        assert torch.equal(decode_latents(vae, expected), vae.decode(denormalize_latents(expected, vae.config)).sample)
