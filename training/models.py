"""Build or load the four parts of a latent diffusion model from a training config.

Every part is either pretrained (a local folder or a Hub id, through the classes' own `from_pretrained`) or built
from a constructor dict in the config. Resolution order for each part: its own `pretrained_<part>` key, then
`pretrained_model_name_or_path` with the diffusers subfolder (`vae/`, `unet/`, ...), then the `<part>_config` dict.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipelines import DDPMScheduler

from .tokenizer import train_clip_tokenizer

logger = get_logger(__name__)


def _source(config, part: str, subfolder: str) -> tuple[str | None, str | None]:
    """(path or hub id, subfolder) to load `part` from, or (None, None) to build it from its config dict."""
    own = getattr(config, f"pretrained_{part}", None)
    if own:
        return own, getattr(config, f"{part}_subfolder", None)
    if config.pretrained_model_name_or_path:
        return config.pretrained_model_name_or_path, subfolder
    return None, None


def _from_pretrained_kwargs(config, subfolder: str | None) -> dict:
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if getattr(config, "revision", None):
        kwargs["revision"] = config.revision
    return kwargs


def load_tokenizer(config, captions: Iterable[str] | None = None) -> CLIPTokenizer:
    path, subfolder = _source(config, "tokenizer", "tokenizer")
    if path:
        return CLIPTokenizer.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
    if captions is None:
        raise ValueError("No pretrained tokenizer is configured, so the dataset's captions are needed to train one.")
    max_length = config.text_encoder_config.get("max_position_embeddings", 77)
    logger.info(f"Training a CLIP-format BPE tokenizer (vocab ≤ {config.tokenizer_vocab_size}) on the captions")
    return train_clip_tokenizer(captions, vocab_size=config.tokenizer_vocab_size, model_max_length=max_length)


def load_text_encoder(config, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    path, subfolder = _source(config, "text_encoder", "text_encoder")
    if path:
        return CLIPTextModel.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config.text_encoder_config,
    )
    return CLIPTextModel(text_config)


def load_vae(config) -> AutoencoderKL:
    path, subfolder = _source(config, "vae", "vae")
    if path:
        return AutoencoderKL.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
    logger.warning(
        "No pretrained VAE is configured: using a randomly initialised, frozen AutoencoderKL built from `vae_config`. "
        "That is fine for tests; for real models train one with scripts/train_vae.py and set `pretrained_vae`."
    )
    return AutoencoderKL(**config.vae_config)


def load_unet(config) -> UNet2DConditionModel:
    path, subfolder = _source(config, "unet", "unet")
    if path:
        return UNet2DConditionModel.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
    return UNet2DConditionModel(**config.unet_config)


def load_noise_scheduler(config) -> DDPMScheduler:
    """Our DDPM scheduler, configured as training uses it; its config is what the saved pipeline records."""
    path, subfolder = _source(config, "scheduler", "scheduler")
    kwargs = dict(config.scheduler_config)
    if path:
        base = DDPMScheduler.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
        kwargs = {**dict(base.config), **kwargs}
    kwargs["prediction_type"] = config.prediction_type
    if config.zero_terminal_snr:
        # Lin et al. 2023 (arXiv 2305.08891): zero terminal SNR needs trailing timesteps at inference.
        kwargs.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    # Only our arguments: an SD 1.x folder ships a PNDMScheduler config, whose extra keys (skip_prk_steps,
    # set_alpha_to_one) describe that sampler, not the training noise schedule.
    accepted = DDPMScheduler._get_init_keys(DDPMScheduler)
    return DDPMScheduler(**{k: v for k, v in kwargs.items() if k in accepted})


def vae_scale_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_compatible(config, vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel) -> None:
    """Cross-part checks that can only run once pretrained parts are known, before any training work."""
    factor = vae_scale_factor(vae)
    if config.resolution % factor:
        raise ValueError(
            f"`resolution`: {config.resolution} must be divisible by the VAE's downsampling factor {factor}."
        )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"`unet_config.in_channels`: {unet.config.in_channels} must equal the VAE's `latent_channels` "
            f"{vae.config.latent_channels}."
        )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"`unet_config.cross_attention_dim`: {unet.config.cross_attention_dim} must equal the text encoder's "
            f"`hidden_size` {text_encoder.config.hidden_size}."
        )


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module
