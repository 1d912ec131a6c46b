"""Build or load the four parts of a latent diffusion model from a training config.

Every part is either pretrained (a local folder or a Hub id, through the classes' own `from_pretrained`) or built
from a constructor dict in the config. Resolution order for each part: its own `pretrained_<part>` key, then
`pretrained_model_name_or_path` with the diffusers subfolder (`vae/`, `unet/`, ...), then the `<part>_config` dict.

Weights load from safetensors only, unless the config sets `allow_pickle` (a pickle can run code when loaded).
`check_sources` looks at every pretrained source before any data or model is loaded, so a missing folder, an
unreachable Hub id or pickle-only weights is one named error up front rather than a traceback after the dataset.
Remote code is never trusted: no `trust_remote_code` is passed, and these classes run no code from a folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipelines import DDPMScheduler
from pipelines.latents import vae_scale_factor
from pipelines.loading import PICKLE_SUFFIXES, SAFE_SUFFIXES, looks_like_path, pickles_of, safetensors_of

from .config import ATTENTION_PROCESSORS
from .tokenizer import train_clip_tokenizer

logger = get_logger(__name__)


# The parts that can be pretrained: the file every such folder holds, and whether it holds weights.
PARTS = {
    "tokenizer": ("tokenizer_config.json", False),
    "text_encoder": ("config.json", True),
    "vae": ("config.json", True),
    "unet": ("config.json", True),
    "scheduler": ("scheduler_config.json", False),
}


def _from_pretrained_kwargs(config, subfolder: str | None, weights: bool = False) -> dict:
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if getattr(config, "revision", None):
        kwargs["revision"] = config.revision
    if weights:  # models only: a tokenizer or scheduler would keep unknown kwargs in its saved config
        # True: safetensors or an error. None (not False): safetensors where present, else the pickle; both diffusers
        # and transformers read False as "the pickle only", which fails on a folder that has safetensors.
        kwargs["use_safetensors"] = None if config.allow_pickle else True
        if config.variant:
            kwargs["variant"] = config.variant
    return kwargs


def _from_pretrained(cls, config, part: str, path: str, subfolder: str | None, key: str, weights: bool = False):
    """`cls.from_pretrained`, with the errors of a bad source (missing files, no safetensors, the Hub unreachable:
    OSError in both libraries) as a ValueError naming the config key."""
    try:
        return cls.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder, weights))
    except OSError as error:
        hint = ""
        if weights and "safetensors" in str(error) and not config.allow_pickle:
            hint = " If it has only pickled weights and you trust it, set allow_pickle=true."
        where = f"{path!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise ValueError(f"`{key}`: could not load the {part} from {where}: {_first_line(error)}{hint}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_tokenizer(config, captions: Iterable[str] | None = None) -> CLIPTokenizer:
    path, subfolder, key = config.pretrained_source("tokenizer")
    if path:
        return _from_pretrained(CLIPTokenizer, config, "tokenizer", path, subfolder, key)
    if captions is None:
        raise ValueError("No pretrained tokenizer is configured, so the dataset's captions are needed to train one.")
    max_length = config.text_encoder_config.get("max_position_embeddings", 77)
    logger.info(f"Training a CLIP-format BPE tokenizer (vocab ≤ {config.tokenizer_vocab_size}) on the captions")
    return train_clip_tokenizer(captions, vocab_size=config.tokenizer_vocab_size, model_max_length=max_length)


def load_text_encoder(config, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    path, subfolder, key = config.pretrained_source("text_encoder")
    if path:
        return _from_pretrained(CLIPTextModel, config, "text encoder", path, subfolder, key, weights=True)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config.text_encoder_config,
    )
    return CLIPTextModel(text_config)


def load_vae(config) -> AutoencoderKL:
    path, subfolder, key = config.pretrained_source("vae")
    if path:
        return _from_pretrained(AutoencoderKL, config, "VAE", path, subfolder, key, weights=True)
    logger.warning(
        "No pretrained VAE is configured: using a randomly initialised, frozen AutoencoderKL built from `vae_config`. "
        "That is fine for tests; for real models train one with scripts/train_vae.py and set `pretrained_vae`."
    )
    return AutoencoderKL(**config.vae_config)


def set_attention_processor(unet: UNet2DConditionModel, name: str) -> None:
    """`name` from `ATTENTION_PROCESSORS`: "sdpa" leaves diffusers' default (AttnProcessor2_0), "classic" installs
    AttnProcessor (baddbmm, softmax, bmm; the same maths)."""
    from diffusers.models.attention_processor import AttnProcessor

    if name not in ATTENTION_PROCESSORS:
        raise ValueError(f"`attention_processor`: {name!r} is not one of {', '.join(ATTENTION_PROCESSORS)}.")
    if name == "classic":
        unet.set_attn_processor(AttnProcessor())


def load_unet(config) -> UNet2DConditionModel:
    path, subfolder, key = config.pretrained_source("unet")
    if path:
        return _from_pretrained(UNet2DConditionModel, config, "UNet", path, subfolder, key, weights=True)
    return UNet2DConditionModel(**config.unet_config)


def load_noise_scheduler(config) -> DDPMScheduler:
    """Our DDPM scheduler, configured as training uses it; its config is what the saved pipeline records."""
    path, subfolder, key = config.pretrained_source("scheduler")
    kwargs = dict(config.scheduler_config)
    if path:
        base = _from_pretrained(DDPMScheduler, config, "scheduler", path, subfolder, key)
        kwargs = {**dict(base.config), **kwargs}
    kwargs["prediction_type"] = config.prediction_type
    if config.zero_terminal_snr:
        # Lin et al. 2023 (arXiv 2305.08891): zero terminal SNR needs trailing timesteps at inference.
        kwargs.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    # Only our arguments: an SD 1.x folder ships a PNDMScheduler config, whose extra keys (skip_prk_steps,
    # set_alpha_to_one) describe that sampler, not the training noise schedule.
    accepted = DDPMScheduler._get_init_keys(DDPMScheduler)
    return DDPMScheduler(**{k: v for k, v in kwargs.items() if k in accepted})


# ---------------------------------------------------------------------------------------------------------------------
# Checking the sources up front
# ---------------------------------------------------------------------------------------------------------------------
def check_sources(config) -> None:
    """Check every pretrained source of `config` without loading a model: a local folder exists and holds the part
    (with safetensors weights, or pickles and `allow_pickle`); a Hub id's config file can be fetched (or is cached,
    offline). Raises a ValueError naming the config key and value."""
    for part, (marker, weights) in PARTS.items():
        path, subfolder, key = config.pretrained_source(part)
        if path:
            _check_source(config, part, path, subfolder, key, marker, weights)


def _check_source(config, part, path, subfolder, key, marker, weights) -> None:
    local = Path(path).expanduser()
    stage_one = key == "pretrained_vae" and local == Path(config.vae_output_dir).expanduser()
    if not local.exists():
        if stage_one:
            raise ValueError(
                f"`{key}`: {path!r} does not exist. It is where the VAE stage writes its model: train it first with "
                f"`python scripts/train_vae.py --config <this config>`, then run this again."
            )
        if looks_like_path(path):
            raise ValueError(f"`{key}`: {path!r} does not exist (a local folder, or a Hub id such as 'org/name').")
        _check_hub_source(config, path, subfolder, key, marker)
        return
    folder = local / subfolder if subfolder else local
    if not local.is_dir():
        raise ValueError(f"`{key}`: {path!r} is not a folder; give a folder written by save_pretrained, or a Hub id.")
    if not folder.is_dir():
        elsewhere = ""
        if hasattr(config, f"pretrained_{part}"):  # the scheduler has no key of its own
            elsewhere = f"; set `pretrained_{part}` to load it from elsewhere"
        raise ValueError(f"`{key}`: {path!r} has no {subfolder}/ folder (the {part}){elsewhere}.")
    if not (folder / marker).is_file():
        hint = ""
        if not subfolder and (local / part / marker).is_file():  # a pipeline folder given for one part
            hint = f"; its {part}/ folder does: set {part}_subfolder={part}"
        raise ValueError(f"`{key}`: {str(folder)!r} has no {marker}, so it holds no {part}{hint}.")
    if weights:
        _check_weights(config, part, folder, key)


def _check_weights(config, part: str, folder: Path, key: str) -> None:
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if safetensors_of(files, config.variant):
        return
    pickled = pickles_of(files, config.variant)
    if pickled and config.allow_pickle:
        return
    variant = f" for variant={config.variant!r}" if config.variant else ""
    if pickled:
        raise ValueError(
            f"`{key}`: {str(folder)!r} holds the {part} weights{variant} only as pickle ({', '.join(pickled)}), "
            f"which can run arbitrary code when loaded. Convert them to safetensors, or set allow_pickle=true if you "
            f"trust the source."
        )
    weight_files = [n for n in sorted(files) if n.endswith(SAFE_SUFFIXES)] + [
        n for n in sorted(files) if n.endswith(PICKLE_SUFFIXES)]
    others = ", ".join(weight_files) or "no weight files"
    raise ValueError(f"`{key}`: {str(folder)!r} has no {part} weights{variant} (it has {others}).")


def _check_hub_source(config, repo_id: str, subfolder: str | None, key: str, marker: str) -> None:
    """Fetch the part's small config file (from the cache when offline): the repo, revision and subfolder exist and
    the Hub (or the cache) can be reached. The weights themselves are checked by `from_pretrained`."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    hub_logger = hub_logging.get_logger()
    level = hub_logger.level
    hub_logger.setLevel(hub_logging.ERROR)  # its "Retrying in 1s" lines: the error below says it in one
    try:
        hf_hub_download(repo_id, marker, subfolder=subfolder, revision=config.revision)
    except (OSError, ValueError, EntryNotFoundError) as error:
        where = f"{subfolder}/{marker}" if subfolder else marker
        offline = " (HF_HUB_OFFLINE is set, and it is not in the local cache)" if constants.HF_HUB_OFFLINE else ""
        raise ValueError(
            f"`{key}`: {repo_id!r} is not a local folder, and {where} could not be fetched from it on the Hub"
            f"{offline}: {_first_line(error)}"
        ) from error
    finally:
        hub_logger.setLevel(level)


def bucket_multiple(config, vae: AutoencoderKL | None = None) -> int | None:
    """With aspect-ratio bucketing on, what a bucket side must divide by so that its latents tile the UNet: the VAE's
    factor × the UNet's downsampling, 2 ** (blocks - 1). From the config dicts, or from a pretrained part's config
    file (no weights are loaded); `vae`: the VAE being trained (stage 1). None when bucketing is off."""
    if not (config.aspect_ratio_buckets or config.bucket_sizes):
        return None
    if vae is None and config.latent_multiple is not None:
        return config.latent_multiple
    parts = {"vae": vae.config} if vae is not None else {}
    for part, cls, own in (("vae", AutoencoderKL, config.vae_config), ("unet", UNet2DConditionModel, config.unet_config)):
        if part in parts:
            continue
        path, subfolder, key = config.pretrained_source(part)
        if path is None:
            parts[part] = own
            continue
        kwargs = _from_pretrained_kwargs(config, subfolder)
        try:
            parts[part] = cls.load_config(path, **kwargs)
        except OSError as error:
            raise ValueError(f"`{key}`: could not read the {part}'s config from {path!r}: {_first_line(error)}") from error
    return vae_scale_factor(parts["vae"]) * 2 ** (len(parts["unet"]["block_out_channels"]) - 1)


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
