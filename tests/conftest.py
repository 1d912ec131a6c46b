"""Tiny but real components, built locally (nothing comes from the Hub): a CLIP-format tokenizer trained on the
shapes captions, a 2-layer CLIPTextModel, a two-block AutoencoderKL and a small UNet2DConditionModel."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CAPTIONS = [
    f"a {size} {color} {shape} on a {bg} background"
    for size in ("small", "large")
    for color in ("red", "green", "blue", "yellow", "purple", "cyan")
    for shape in ("circle", "square", "triangle")
    for bg in ("white", "black", "gray")
]


def make_tokenizer(model_max_length: int = 77):
    from training.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(CAPTIONS, vocab_size=600, model_max_length=model_max_length)


def make_components(seed: int = 0, scheduler=None) -> dict:
    """vae (32px images -> 4x16x16 latents), text_encoder, tokenizer, unet, scheduler; deterministic from `seed`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines import DDPMScheduler

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    for module in (vae, text_encoder, unet):
        module.eval()
    if scheduler is None:
        scheduler = DDPMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
        )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


@pytest.fixture
def components():
    return make_components()
