"""The identical inputs of the side-by-side: one SD-format model folder and one imagefolder, built from a config.

The folder is what diffusers' `StableDiffusionPipeline.save_pretrained` writes (vae/, text_encoder/, tokenizer/,
unet/, scheduler/, model_index.json), so diffusers' `train_text_to_image.py` loads it with `from_pretrained` and
sculpt's trainer with `pretrained_model_name_or_path`. The parts are the config's architectures with random weights,
built by sculpt's own loaders (a config that names pretrained sources is built from its dicts all the same), and the
scheduler is our `DDPMScheduler`'s configuration saved as diffusers' `DDPMScheduler`, which is what diffusers' script
reads from scheduler/.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from training.builtin.shapes import make_shapes_dataset
from training.config import TrainConfig
from training.data import all_captions, write_imagefolder

MODEL_FOLDER, DATA_FOLDER = "model", "data"
_PRETRAINED_KEYS = ("pretrained_model_name_or_path", "pretrained_unet", "pretrained_vae", "pretrained_text_encoder",
                    "pretrained_tokenizer")  # fmt: skip


def from_scratch(config: TrainConfig) -> TrainConfig:
    """`config` with every pretrained source removed, so each part is built from its `*_config` dict."""
    return dataclasses.replace(config, **{key: None for key in _PRETRAINED_KEYS})


def dataset_size(config: TrainConfig, batch: int, num_samples: int | None = None) -> int:
    """How many shapes images to generate: `num_samples` (else the config's `num_shapes_samples`) rounded down to a
    multiple of the global `batch`, so that every step of both tools sees a full batch in every epoch (diffusers'
    loader keeps the last partial batch, sculpt's drops it)."""
    wanted = num_samples if num_samples is not None else config.num_shapes_samples
    return (wanted // batch) * batch


def build_parts(config: TrainConfig, folder: str | Path, num_samples: int) -> tuple[Path, Path]:
    """Write <folder>/model (the SD-format pipeline) and <folder>/data (an imagefolder of `num_samples` built-in
    shapes at the config's resolution); returns both paths. Seeded by the config: the same bytes on every run."""
    from accelerate import PartialState
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from diffusers import DDPMScheduler as DiffusersDDPMScheduler

    from training.models import load_noise_scheduler, load_text_encoder, load_tokenizer, load_unet

    PartialState(cpu=True)  # sculpt's loaders log through accelerate, which needs a state
    config = from_scratch(config)
    folder = Path(folder)
    model_dir, data_dir = folder / MODEL_FOLDER, folder / DATA_FOLDER
    for path in (model_dir, data_dir):
        if path.exists():
            shutil.rmtree(path)

    dataset = make_shapes_dataset(num_samples, config.resolution, config.dataset_seed)
    write_imagefolder(dataset, data_dir)
    # As training/train.py does: the tokenizer is trained on the captions, then the seed is set again for the weights.
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config, captions=all_captions(dataset))
    torch.manual_seed(config.seed)
    text_encoder = load_text_encoder(config, tokenizer)
    vae = AutoencoderKL(**config.vae_config)  # load_vae would warn that a random VAE is only for tests: it is one
    unet = load_unet(config)
    scheduler = DiffusersDDPMScheduler.from_config(load_noise_scheduler(config).config)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.save_pretrained(model_dir)
    return model_dir, data_dir
