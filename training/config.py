"""The training configuration: one commented dataclass, loaded as defaults < YAML file < `key=value` overrides.

    config = load_config("configs/shapes.yaml", ["learning_rate=3e-4", "unet_config.block_out_channels=[32,64]"])

Keys are flat and named as in diffusers' `examples/text_to_image/train_text_to_image.py` wherever that script has a
counterpart, so its users can read our configs without a glossary. One schema serves both stages: the VAE stage
(`vae_*`, `kl_weight`, plus the shared data/optimizer/precision keys) ignores the diffusion-only keys and vice versa.

Override values are strings parsed to the field's type: int, float (`1e-4` works, in YAML files too), bool
(true/false/1/0/yes/no/on/off), str, `X | None` ("none"/"null" → None), list[str] and list[float] (YAML flow
`[a, b]` or comma-separated `a,b`) and dict (YAML flow `{a: 1}`). A dotted key sets one entry of a dict field
(`scheduler_config.num_train_timesteps=500`); a dict given whole in YAML or as an override replaces the default dict.
An empty value unsets a key (`dataset_name=` over a YAML file that names one): it is back to its default.
YAML is read with 1.2 scalars: only true/false are booleans, so `mixed_precision: no` means the string "no".
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.loading import is_repo_id
from pipelines.scheduling_ddpm import PREDICTION_TYPES

from .buckets import check_buckets, parse_size
from .cli import ATTENTION_PROCESSORS, DYNAMO_BACKENDS, MIXED_PRECISIONS

# Vocabularies of the choice-valued keys (checked in `TrainConfig.__post_init__`).
# The names `diffusers.optimization.get_scheduler` accepts without extra arguments (`piecewise_constant` needs
# `step_rules`, which we don't expose).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# PIL resampling filters, by the names diffusers' `--image_interpolation_mode` uses.
IMAGE_INTERPOLATION_MODES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
NON_FINITE_LOSS_POLICIES = ("stop", "skip")
BAD_IMAGE_POLICIES = ("stop", "skip")
# accelerate trackers: "all" is every integration accelerate finds installed (its own meaning of log_with="all").
REPORT_TO = ("tensorboard", "wandb", "all", "none")
BUILTIN_DATASETS = ("shapes", "emoji", "digits")  # training/builtin/
LATENT_CACHES = ("memory", "disk")
TRAINING_MODES = ("full", "lora")
# The UNet's attention projections (self and cross): what diffusers' LoRA scripts adapt in a UNet2DConditionModel.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Set by sculpt from the tokenizer or from top-level keys; giving them inside the dicts would conflict.
_TOKENIZER_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
_MIN_TOKENIZER_VOCAB = 2 * 256 + 2  # byte-level BPE: 256 bytes, each mid-word and word-final, plus BOS/EOS
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # the Hub's license ids: apache-2.0, cc-by-nc-4.0, other, ...


# What each key is for, on the field itself (`_run`, `_diffusion`, `_vae` below), and the sets derived from that:
# - run management (`_run`): where a run writes and logs, how often it checkpoints, validates and judges, how long it
#   trains (a decaying LR schedule then follows the new length), how it loads and launches. A resumed run may set
#   these differently from the run that wrote the checkpoint. Every other key decides what is trained, so a checkpoint
#   records them (with the number of processes, which sets the effective batch) and a resume refuses one written with
#   other values.
# - stage (`_diffusion`, `_vae`): keys only one stage reads. The VAE stage (training/train_vae.py) builds
#   AutoencoderKL(**vae_config) and trains it with the data, seed, optimizer, precision and EMA keys it shares with the
#   diffusion stage; the diffusion-only keys decide only what stage 2 trains, and the VAE-only keys only stage 1.
_RUN, _STAGE = "sculpt_resumable", "sculpt_stage"


def _key(default=dataclasses.MISSING, factory=dataclasses.MISSING, *, resumable: bool = False, stage: str = "both"):
    return field(default=default, default_factory=factory, metadata={_RUN: resumable, _STAGE: stage})


def _run(default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A run-management key: may differ on resume."""
    return _key(default, factory, resumable=True)


def _diffusion(default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A key only the diffusion stage (stage 2) reads."""
    return _key(default, factory, stage="diffusion")


def _vae(default=dataclasses.MISSING, factory=dataclasses.MISSING, resumable: bool = False):
    """A key only the VAE stage (stage 1) reads; `resumable` when it only manages that stage's run."""
    return _key(default, factory, resumable=resumable, stage="vae")


def _default_vae_config() -> dict:
    # Three blocks → downsampling factor 4: 64px images become 4×16×16 latents, the LDM paper's "f=4" setting,
    # which it found the best quality/speed trade-off (Rombach et al. 2022, arXiv 2112.10752, Sec. 4.1).
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    }


def _default_unet_config() -> dict:
    # A small Stable-Diffusion-shaped UNet: cross-attention in the two high-resolution levels, on 16×16 latents.
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [64, 128, 256],
        "layers_per_block": 2,
        "cross_attention_dim": 256,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def _default_text_encoder_config() -> dict:
    # A 4-layer CLIP text transformer; vocab_size and the special token ids come from the tokenizer.
    return {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
    }


def _default_scheduler_config() -> dict:
    # The LDM / Stable Diffusion noise schedule for latents ("scaled_linear" β from 0.00085 to 0.012 over 1000 steps,
    # arXiv 2112.10752); DDPM's linear 1e-4..0.02 (arXiv 2006.11239) was tuned for pixels. `prediction_type` and
    # zero-terminal-SNR rescaling are set by the top-level keys, not here.
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "steps_offset": 1,
    }


@dataclass
class TrainConfig:
    # ---- run and outputs -------------------------------------------------------------------------------------------
    output_dir: str = _run("sculpt-model")  # the trained pipeline, checkpoints and the resolved config.yaml go here
    overwrite_output_dir: bool = _run(False)  # refuse to start in a non-empty output_dir unless set (or resuming)
    seed: int = 0  # seeds weights, noise, timesteps and per-sample augmentations, so a run can be repeated exactly
    # Where loss, LR, grad norm, images/s, validation images and the judge go (accelerate trackers): "tensorboard",
    # "wandb" (Weights & Biases; WANDB_MODE=offline keeps it local), "all" or "none".
    report_to: str = _run("tensorboard")
    logging_dir: str = _run("logs")  # tracker files, relative to output_dir (as in diffusers)
    tracker_project_name: str = _run("sculpt")  # run name shown in TensorBoard

    # ---- data ------------------------------------------------------------------------------------------------------
    # Exactly one source: `dataset_name` (a built-in dataset: "shapes", "emoji" or "digits"; a Hub dataset id; or a folder
    # written by `datasets.save_to_disk`) or `train_data_dir` (an imagefolder: images plus metadata.jsonl with
    # file_name/text).
    dataset_name: str | None = None
    dataset_config_name: str | None = None  # the Hub dataset's configuration, if it has several
    train_data_dir: str | None = None
    cache_dir: str | None = _run(None)  # where `datasets` caches downloads and Arrow files; None → its default
    image_column: str | None = None  # None → "image", else the first column with the datasets.Image feature
    caption_column: str | None = None  # None → the first of "text", "caption", "captions", "prompt"
    max_train_samples: int | None = None  # train on a random subset of this size (quick experiments, debugging)
    dataset_seed: int = 0  # which data: the shapes generator and the max_train_samples subset; independent of `seed`
    num_shapes_samples: int = 10_000  # size of the built-in shapes dataset (216 captions, so ~46 images each)
    # Colours of the built-in shapes (training/builtin/shapes.py): [] → the base grammar's six; e.g. [orange] draws
    # every shape in a colour the base grammar lacks, the concept of docs/lora.md. Also what the judge's captions use.
    shapes_colors: list[str] = field(default_factory=list)
    # Backgrounds of the built-in shapes: [] → the base three; e.g. [white, black, gray, yellow] mixes in one the base
    # grammar lacks (a shape is never drawn in its background's colour). Also what the judge's captions use.
    shapes_backgrounds: list[str] = field(default_factory=list)
    # The built-in emoji dataset (training/builtin/emoji.py, sculpt[emoji]): OpenMoji's artwork ("openmoji") and, where
    # Debian's fonts-noto-color-emoji is installed, Noto's ("noto"), named by Unicode's CLDR short names. Built once
    # at `resolution` into `cache_dir`.
    emoji_styles: list[str] = field(default_factory=lambda: ["openmoji"])
    emoji_skin_tones: bool = False  # the skin-tone variants too (about half of all emoji are one)
    emoji_groups: list[str] = field(default_factory=list)  # Unicode groups to keep ("Animals & Nature", ...); [] → all
    emoji_exclude_groups: list[str] = field(default_factory=list)  # e.g. [Flags]
    emoji_background: str = "white"  # what the transparent artwork is composited onto (a colour name or #rrggbb)
    # The built-in digits dataset (training/builtin/digits.py, sculpt[digits]): scikit-learn's 1,797 handwritten 8×8
    # digits upsampled to `resolution`; this many per class are held out for the judge (split by `dataset_seed`).
    digits_test_per_class: int = 30
    on_bad_image: str = "stop"  # an unreadable image: "stop" with an error naming it, or "skip" with a counted warning
    resolution: int = 64  # training side in pixels: images are resized (shorter side) then cropped to a square
    center_crop: bool = False  # center crop instead of a random crop
    random_flip: bool = False  # horizontal flips; captions that say "left"/"right" would be made wrong by them
    image_interpolation_mode: str = "lanczos"  # resize filter (diffusers' default): nearest|box|bilinear|hamming|...
    # Aspect-ratio bucketing (training/buckets.py): images of mixed sizes go to the bucket of about resolution² pixels
    # whose aspect ratio is closest (1:4 to 4:1, sides divisible by the VAE factor × the UNet's downsampling), are
    # cropped only on one side, and every batch is one bucket's. `bucket_sizes` ("WIDTHxHEIGHT", e.g. [64x32, 32x64])
    # replaces the generated buckets with yours (and turns bucketing on).
    aspect_ratio_buckets: bool = False
    bucket_sizes: list[str] = field(default_factory=list)
    dataloader_num_workers: int = _run(0)  # 0 → load in the main process (enough for small images)
    # Read the data shard by shard as batches need it instead of loading it (training/streaming.py), for datasets
    # larger than memory or disk: `dataset_name` a folder of parquet/arrow/webdataset shards (scripts/make_shards.py)
    # or a Hub id, or `train_data_dir`. Seeded shard order and shuffle per epoch, exact resume, split across processes.
    streaming: bool = False
    # With streaming: rows are shuffled in windows of this many, the undecoded images a process holds at once
    shuffle_buffer_size: int = 1000

    # ---- model parts: each is pretrained (its own key, else pretrained_model_name_or_path/<subfolder>) or built ----
    # a diffusers-layout repo or folder (unet/, vae/, text_encoder/..)
    pretrained_model_name_or_path: str | None = _diffusion(None)
    # Hub revision (branch, tag or commit) of the pretrained parts, for reproducibility
    revision: str | None = _diffusion(None)
    # weight file variant, e.g. "fp16": loads diffusion_pytorch_model.fp16.safetensors
    variant: str | None = _diffusion(None)
    # Weights load from safetensors only: a pickle file (*.bin, *.ckpt) can run arbitrary code when it is loaded, so
    # a part (or a checkpoint to resume) that has only pickled weights is refused. Set true only for a source you
    # trust: safetensors are still preferred where a part has both.
    allow_pickle: bool = _run(False)
    # path/Hub id of a UNet2DConditionModel, overrides the one from the repo
    pretrained_unet: str | None = _diffusion(None)
    unet_subfolder: str | None = _diffusion(None)
    unet_config: dict[str, Any] = _diffusion(factory=_default_unet_config)  # UNet2DConditionModel(**unet_config)
    # path/Hub id of an AutoencoderKL, e.g. the VAE stage's vae_output_dir
    pretrained_vae: str | None = _diffusion(None)
    vae_subfolder: str | None = _diffusion(None)
    vae_config: dict[str, Any] = field(default_factory=_default_vae_config)  # AutoencoderKL(**vae_config), VAE stage
    pretrained_text_encoder: str | None = _diffusion(None)  # path/Hub id of a CLIPTextModel
    text_encoder_subfolder: str | None = _diffusion(None)
    text_encoder_config: dict[str, Any] = _diffusion(factory=_default_text_encoder_config)  # CLIPTextConfig kwargs
    # path/Hub id of a CLIPTokenizer; None → train a BPE on the captions
    pretrained_tokenizer: str | None = _diffusion(None)
    tokenizer_subfolder: str | None = _diffusion(None)
    # upper bound for the trained tokenizer (≥ 514: 2×256 byte symbols + BOS/EOS)
    tokenizer_vocab_size: int = _diffusion(1000)
    train_text_encoder: bool = _diffusion(False)  # train it with the UNet (needed when it is built from scratch)
    # (with training_mode lora, `train_text_encoder_lora` instead: adapters on the frozen text encoder)
    scheduler_config: dict[str, Any] = _diffusion(factory=_default_scheduler_config)  # our DDPMScheduler kwargs

    # ---- adapters: LoRA (Hu et al. 2021, arXiv 2106.09685) on a trained base model (training/lora.py) ------------
    # "full" trains every UNet weight; "lora" freezes the base (`pretrained_model_name_or_path`: a sculpt pipeline
    # folder, an SD-format folder or a Hub id) and trains ΔW = (α / r) B A on `lora_target_modules` only, the peft
    # adapters of diffusers' LoRA scripts. Its output is pytorch_lora_weights.safetensors (diffusers' format) and a
    # card; checkpoints hold the adapters and their optimizer state only. LoRA takes a higher learning rate than full
    # fine-tuning of a large model: diffusers' LoRA scripts default to 1e-4 (this config's default), SD full
    # fine-tuning uses ~1e-5; docs/lora.md measures both on the shapes model.
    training_mode: str = _diffusion("full")
    lora_rank: int = _diffusion(4)  # r: the adapter's rank; the file grows linearly with it (4–16 is typical)
    lora_alpha: float | None = _diffusion(None)  # α, the adapter's scale is α / r; none → r (diffusers' scripts)
    lora_dropout: float = _diffusion(0.0)  # dropout on the adapter's input, a regulariser for small datasets
    # Which layers get adapters (peft's rule: a layer whose name is, or ends in ".", an entry). The default is the
    # attention projections; add the ResNet convs with [to_q, to_k, to_v, to_out.0, conv1, conv2], or the
    # transformer blocks' feed-forward with ff.net.0.proj, ff.net.2.
    lora_target_modules: list[str] = _diffusion(factory=lambda: list(DEFAULT_LORA_TARGETS))
    # Adapters on the text encoder's attention projections too (q/k/v/out_proj), trained with the UNet's.
    train_text_encoder_lora: bool = _diffusion(False)
    # For the card: the words that call the adapter up. [] → the rare token of `instance_prompt` (DreamBooth), if any.
    trigger_words: list[str] = _run(factory=list)

    # ---- DreamBooth (Ruiz et al. 2023, arXiv 2208.12242), full or LoRA -----------------------------------------
    # Every training image gets this one caption, e.g. "a photo of sks dog" with a rare token; the data's own
    # captions are ignored, and `train_data_dir` may then be a plain folder of images (no metadata.jsonl).
    instance_prompt: str | None = _diffusion(None)
    # Prior preservation: images of the class drawn by the base model before training (`class_prompts`, cycled,
    # `num_class_images` of them in `class_data_dir`), one per training image in every batch, their loss weighted by
    # `prior_loss_weight`, so the adapter learns the new thing without forgetting the rest of its class. Real images
    # do it too ("regularisation images"): a `class_data_dir` holding `num_class_images` images with their captions
    # in metadata.jsonl needs no `class_prompts`, and nothing is drawn.
    with_prior_preservation: bool = _diffusion(False)
    class_prompts: list[str] = _diffusion(factory=list)  # e.g. [a photo of a dog]; DreamBooth's --class_prompt
    class_data_dir: str | None = _diffusion(None)  # None → <output_dir>/class_images; images already there are kept
    num_class_images: int = _diffusion(100)
    prior_loss_weight: float = _diffusion(1.0)  # λ in L = L_instance + λ L_prior (DreamBooth Eq. 2)
    class_guidance_scale: float = _diffusion(3.0)  # how the base model draws the class images
    class_num_inference_steps: int = _diffusion(50)

    # ---- diffusion objective ---------------------------------------------------------------------------------------
    prediction_type: str = _diffusion("epsilon")  # ε (DDPM, arXiv 2006.11239), v (arXiv 2202.00512) or x_0 ("sample")
    # rescale β so the last step is pure noise, arXiv 2305.08891 (needs v_prediction)
    zero_terminal_snr: bool = _diffusion(False)
    # Min-SNR-γ loss weighting, arXiv 2303.09556 (5.0 recommended); None → plain MSE
    snr_gamma: float | None = _diffusion(None)
    noise_offset: float = _diffusion(0.0)  # for very dark/bright images: crosslabs.org/blog/diffusion-with-offset-noise
    # caption → "" with this probability: classifier-free guidance, arXiv 2207.12598
    cfg_dropout: float = _diffusion(0.1)

    # ---- optimization ----------------------------------------------------------------------------------------------
    max_train_steps: int = _run(10_000)  # optimizer steps (each spans gradient_accumulation_steps batches)
    train_batch_size: int = _diffusion(16)  # per device
    gradient_accumulation_steps: int = 1  # effective batch = train_batch_size × accumulation × processes
    learning_rate: float = _diffusion(1e-4)  # diffusers' default for UNet training with AdamW
    scale_lr: bool = _diffusion(False)  # multiply learning_rate by the effective batch size (as diffusers does)
    lr_scheduler: str = "constant"  # a diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0  # linear warmup; needs a *_with_warmup or decaying schedule ("constant" ignores it)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2  # decoupled weight decay, AdamW (arXiv 1711.05101)
    adam_epsilon: float = 1e-08
    max_grad_norm: float = 1.0  # clip the global gradient norm, which keeps early from-scratch training stable
    # A NaN/inf loss or gradient never reaches the weights. "skip": drop that update and go on (one bad batch or a
    # rare spike), but stop after `max_consecutive_non_finite` in a row (the run has diverged); "stop": stop at the
    # first. Stopping raises without writing a checkpoint, so the last good one stays the latest.
    non_finite_loss: str = _run("skip")
    max_consecutive_non_finite: int = _run(10)

    # ---- speed and memory ------------------------------------------------------------------------------------------
    mixed_precision: str = "no"  # "fp16" / "bf16" autocast on GPUs (Accelerate); master weights stay float32
    # TF32 matmuls on Ampere+ GPUs: faster, slightly less exact; false keeps torch's default
    allow_tf32: bool = _diffusion(False)
    gradient_checkpointing: bool = _run(False)  # recompute UNet activations in backward: less memory, ~25% slower
    # The UNet's attention kernel while training: "sdpa" is diffusers' default (AttnProcessor2_0, torch's
    # scaled_dot_product_attention); "classic" is AttnProcessor (baddbmm, softmax, bmm), the same maths. With bf16 on
    # a CPU that has bf16 units, "classic" is the fast one: SDPA's CPU flash kernel gains nothing from bf16 at these
    # sizes (docs/performance.md, the step candidates). Training only: the saved model has no processor setting.
    attention_processor: str = _diffusion("sdpa")
    # torch.compile the UNet's training forward with this backend ("inductor"; "no": eager, the exact default). The
    # first step compiles (~2.5-4 min on 2 CPU cores with an empty cache, ~40 s once torch's cache in /tmp holds it).
    # Validation, the judge and the saved model use the module itself, uncompiled. Not bit-identical to eager. Refused
    # with FSDP / DeepSpeed, and on CPU with bf16/fp16 autocast (torch 2.13's inductor gets that backward wrong there:
    # docs/performance.md). Set it here, not with `accelerate launch --dynamo_backend` (refused: it would compile the
    # whole wrapped model).
    dynamo_backend: str = _key("no", resumable=True, stage="diffusion")
    # Encode each image with the frozen VAE once instead of every step. A cache holds the center crop of each image
    # (so random crops are refused: they would be the same every epoch); in memory one view, on disk both flips.
    cache_latents: bool = _diffusion(False)
    cache_text_embeddings: bool = _diffusion(False)  # encode each caption with the frozen text encoder once
    # Where the `cache_latents` cache lives: "memory" (this process's RAM) or "disk" (training/latent_cache.py: sharded
    # safetensors built once, each process its share, keyed by everything that changes them; read as needed, so
    # memory stays flat; with `random_flip` both flips; with `cache_text_embeddings` each row's caption embeddings too).
    latent_cache: str = _diffusion("memory")
    latent_cache_dir: str | None = _run(None)  # the disk cache's folder; None → <cache_dir>/sculpt-latents/<key>

    # ---- processes (set by `accelerate launch`) -------------------------------------------------------------------
    # The number of processes this run is meant for (its effective batch, and so its learning rate, depend on it);
    # a launch with another number is refused. `accelerate launch --num_processes 2` without --multi_gpu runs one
    # process on a CPU machine, silently. None → whatever the launch gives.
    num_processes: int | None = _run(None)
    # Seconds a process waits in a collective (all-reduce, barrier) before giving up. A rank that dies is noticed by
    # the launcher (torchrun ends the others) and by gloo's broken connections; this bounds a rank that hangs.
    # 30 min (torch's default) leaves room for the main process's validation and final save.
    ddp_timeout: int = _run(1800)
    # Seconds the other processes wait while the main one alone validates, judges, trains the tokenizer, or writes the
    # final pipeline and model card: a barrier of its own (training/run.py), so that work does not hit ddp_timeout.
    main_process_timeout: int = _run(7200)

    # ---- exponential moving average of the UNet weights (what gets saved and sampled) ------------------------------
    use_ema: bool = False
    ema_decay: float = 0.9999  # for ~100k+ step runs; tiny runs need ~0.99 or ema_warmup, or EMA stays near init
    ema_warmup: bool = False  # decay = 1 - (1 + step/inv_gamma)^-power, capped at ema_decay (diffusers EMAModel)
    ema_inv_gamma: float = 1.0  # EMAModel inv_gamma
    ema_power: float = 2 / 3  # EMAModel power: 2/3 suits runs of ~1M steps, 3/4 shorter ones

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    checkpointing_steps: int | None = _run(500)  # save the full training state every N steps; None → only at the end
    checkpoints_total_limit: int | None = _run(None)  # keep only the newest N checkpoints; None → keep all
    resume_from_checkpoint: str | None = _run(None)  # "latest" (newest complete one in output_dir) or a checkpoint path

    # ---- validation (sampled images logged during training) --------------------------------------------------------
    validation_prompts: list[str] = _run(factory=list)
    validation_steps: int | None = _run(None)  # sample every N steps; None → never (needs validation_prompts)
    num_validation_images: int = _run(1)  # per prompt
    num_inference_steps: int = _run(50)  # sampler steps for validation images
    guidance_scale: float = _run(7.5)  # classifier-free guidance scale, arXiv 2207.12598; ≤ 1 disables guidance
    validation_seed: int | None = _run(None)  # None → `seed`; fixed so validation images are comparable across steps
    # Also sample the validation prompts at these sizes ("WIDTHxHEIGHT"), e.g. a bucketed model's [64x32, 32x64].
    validation_resolutions: list[str] = _run(factory=list)

    # ---- shapes judge at validation time (training/judges/shapes.py; only with dataset_name: shapes) ------------
    # Every N steps and at the end, generate each of the 108 captions of the shapes grammar with the EMA weights and
    # read size, colour, shape and background back off the pixels; accuracies go to the trackers (eval/<scale>/<attr>)
    # and to eval_history.json. None → never.
    eval_steps: int | None = _run(None)
    eval_guidance_scales: list[float] = _run(factory=lambda: [1.0, 3.0])  # compared on the same noise
    eval_per_caption: int = _run(1)  # images per caption (108 captions); more gives steadier accuracies, slower
    eval_num_inference_steps: int = _run(50)  # sampler steps per judged image

    # ---- Hub -------------------------------------------------------------------------------------------------------
    # No hub_token key: the resolved config is saved beside the outputs, which would leak it. Use `hf auth login`
    # or the HF_TOKEN environment variable.
    push_to_hub: bool = _run(False)  # push the final pipeline folder and its model card (training/hub.py); main process
    # "user/repo" (or "repo", in your own namespace) to push the final pipeline to
    hub_model_id: str | None = _run(None)
    # create the repo private, so a first push is not public; an existing repo keeps its own
    hub_private: bool = _run(False)
    # The model card's `license:` (a Hub license id). No default fits every run: weights trained from scratch are
    # yours to license, a fine-tune inherits its base model's (e.g. creativeml-openrail-m for SD 1.x), so say it.
    model_license: str = _run("other")

    # ---- VAE stage (scripts/train_vae.py): trains AutoencoderKL(**vae_config) on the same data -------------------
    # where the trained VAE is saved; point pretrained_vae here for stage 2
    vae_output_dir: str = _vae("sculpt-vae", resumable=True)
    vae_max_train_steps: int = _vae(10_000, resumable=True)
    vae_train_batch_size: int = _vae(16)
    vae_learning_rate: float = _vae(1e-4)
    kl_weight: float = _vae(1e-6)  # KL-regularised autoencoder (LDM, arXiv 2112.10752 App. G): a slight pull to N(0, I)

    def __post_init__(self):
        # 1. Types: every field holds its declared type (int promotes to float), whoever built the config.
        hints = _field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), hints[f.name]))

        # 2. Ranges and choices.
        _check(self.learning_rate > 0, f"`learning_rate`: {self.learning_rate} must be > 0.")
        _check(self.vae_learning_rate > 0, f"`vae_learning_rate`: {self.vae_learning_rate} must be > 0.")
        _check(0 <= self.cfg_dropout <= 1, f"`cfg_dropout`: {self.cfg_dropout} must be in [0, 1].")
        _check(self.resolution > 0, f"`resolution`: {self.resolution} must be > 0.")
        for key in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "num_inference_steps",
                    "num_validation_images", "max_consecutive_non_finite", "num_shapes_samples", "ddp_timeout",
                    "vae_max_train_steps", "vae_train_batch_size", "eval_per_caption", "eval_num_inference_steps",
                    "shuffle_buffer_size", "main_process_timeout", "num_class_images", "class_num_inference_steps"):
            _check(getattr(self, key) >= 1, f"`{key}`: {getattr(self, key)} must be ≥ 1.")
        for key in ("checkpointing_steps", "checkpoints_total_limit", "validation_steps", "max_train_samples",
                    "num_processes", "eval_steps"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"`{key}`: {value} must be ≥ 1, or none to disable it.")
        for key in ("lr_warmup_steps", "dataloader_num_workers", "seed", "dataset_seed", "noise_offset",
                    "adam_weight_decay", "kl_weight", "guidance_scale"):
            _check(getattr(self, key) >= 0, f"`{key}`: {getattr(self, key)} must be ≥ 0.")
        _check(self.validation_seed is None or self.validation_seed >= 0,
               f"`validation_seed`: {self.validation_seed} must be ≥ 0, or none to use `seed`.")
        for key in ("adam_beta1", "adam_beta2"):
            _check(0 <= getattr(self, key) < 1, f"`{key}`: {getattr(self, key)} must be in [0, 1).")
        for key in ("adam_epsilon", "max_grad_norm", "ema_inv_gamma", "ema_power"):
            _check(getattr(self, key) > 0, f"`{key}`: {getattr(self, key)} must be > 0.")
        _check(0 < self.ema_decay < 1, f"`ema_decay`: {self.ema_decay} must be in (0, 1).")
        _check(bool(self.eval_guidance_scales) and all(g >= 0 for g in self.eval_guidance_scales)
               and len(set(self.eval_guidance_scales)) == len(self.eval_guidance_scales),
               f"`eval_guidance_scales`: {self.eval_guidance_scales} must be a non-empty list of distinct numbers "
               "≥ 0.")
        _check(self.snr_gamma is None or self.snr_gamma > 0,
               f"`snr_gamma`: {self.snr_gamma} must be > 0, or none to disable Min-SNR weighting.")
        _check(self.tokenizer_vocab_size >= _MIN_TOKENIZER_VOCAB,
               f"`tokenizer_vocab_size`: {self.tokenizer_vocab_size} must be ≥ {_MIN_TOKENIZER_VOCAB} "
               f"(a byte-level BPE holds 2×256 byte symbols plus BOS/EOS).")
        _check(self.resume_from_checkpoint != "",
               "`resume_from_checkpoint`: '' is empty; use 'latest', a checkpoint path, or none.")
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("attention_processor", self.attention_processor, ATTENTION_PROCESSORS)
        _check_choice("dynamo_backend", self.dynamo_backend, DYNAMO_BACKENDS)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _check_choice("image_interpolation_mode", self.image_interpolation_mode, IMAGE_INTERPOLATION_MODES)
        _check_choice("non_finite_loss", self.non_finite_loss, NON_FINITE_LOSS_POLICIES)
        _check_choice("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)
        _check_choice("report_to", self.report_to, REPORT_TO)
        _check_choice("latent_cache", self.latent_cache, LATENT_CACHES)
        _check_choice("training_mode", self.training_mode, TRAINING_MODES)
        _check(self.lora_rank >= 1, f"`lora_rank`: {self.lora_rank} must be ≥ 1 (the adapter's rank r).")
        _check(self.lora_alpha is None or self.lora_alpha > 0,
               f"`lora_alpha`: {self.lora_alpha} must be > 0, or none to use lora_rank.")
        _check(0 <= self.lora_dropout < 1, f"`lora_dropout`: {self.lora_dropout} must be in [0, 1).")
        _check(bool(self.lora_target_modules) and all(t.strip() for t in self.lora_target_modules)
               and len(set(self.lora_target_modules)) == len(self.lora_target_modules),
               f"`lora_target_modules`: {self.lora_target_modules} must be a non-empty list of distinct layer names "
               f"(e.g. {list(DEFAULT_LORA_TARGETS)}).")
        for key in ("prior_loss_weight", "class_guidance_scale"):
            _check(getattr(self, key) >= 0, f"`{key}`: {getattr(self, key)} must be ≥ 0.")
        _check(self.instance_prompt is None or bool(self.instance_prompt.strip()),
               "`instance_prompt`: '' is empty; give the caption every training image gets, or none.")
        if self.shapes_colors or self.shapes_backgrounds:
            from .builtin.shapes import check_backgrounds, check_colors

            colors = check_colors(self.shapes_colors or None, "shapes_colors")
            check_backgrounds(self.shapes_backgrounds or None, colors, "shapes_backgrounds")

        # 3. Cross-field checks.
        sources = {k: getattr(self, k) for k in ("dataset_name", "train_data_dir") if getattr(self, k) is not None}
        _check(len(sources) == 1,
               "Set exactly one data source, `dataset_name` (e.g. 'shapes', a Hub dataset id or a saved dataset "
               f"folder) or `train_data_dir` (an imagefolder); got {sources or 'neither'}.")
        _check(not (self.push_to_hub and not self.hub_model_id),
               "`push_to_hub`: true needs `hub_model_id` (e.g. 'user/sculpt-shapes').")
        _check(self.hub_model_id is None or is_repo_id(self.hub_model_id),
               f"`hub_model_id`: {self.hub_model_id!r} is not a Hub repo id; use 'user/name' or 'name' (letters, "
               "digits, '-', '_', '.'; at most 96 characters; no '--' or '..').")
        _check(_LICENSE_ID.fullmatch(self.model_license) is not None,
               f"`model_license`: {self.model_license!r} is not a Hub license id; use a lowercase id such as "
               "'apache-2.0', 'mit', 'creativeml-openrail-m' or 'other' "
               "(huggingface.co/docs/hub/repositories-licenses).")
        _check(not (self.validation_steps is not None and not self.validation_prompts),
               f"`validation_steps`: {self.validation_steps} needs at least one of `validation_prompts`.")
        _check(not (self.lr_warmup_steps > 0 and self.lr_scheduler == "constant"),
               f"`lr_warmup_steps`: {self.lr_warmup_steps} has no effect with `lr_scheduler`: 'constant'; use "
               "'constant_with_warmup' (or a decaying schedule), or set lr_warmup_steps=0.")
        _check(self.lr_warmup_steps <= self.max_train_steps,
               f"`lr_warmup_steps`: {self.lr_warmup_steps} cannot be larger than `max_train_steps`: "
               f"{self.max_train_steps}.")
        # Lin et al. 2023 (arXiv 2305.08891, Sec. 3.2): at SNR 0 the ε target is the input itself, so the model
        # learns nothing at the last step; v-prediction is what makes zero terminal SNR trainable.
        _check(not (self.zero_terminal_snr and self.prediction_type != "v_prediction"),
               f"`zero_terminal_snr`: true needs `prediction_type`: 'v_prediction', got {self.prediction_type!r}.")
        for key in ("train_text_encoder", "train_text_encoder_lora"):
            _check(not (self.cache_text_embeddings and getattr(self, key)),
                   f"`cache_text_embeddings`: true cannot be combined with `{key}`: true (the embeddings change as "
                   "the encoder trains).")
        self._check_adapters()
        # The memory cache holds one (center-cropped, unflipped) view per image: random flips would silently stop.
        # The disk cache holds both flips and draws each sample's flip as the uncached path does.
        _check(not (self.cache_latents and self.random_flip and self.latent_cache == "memory"),
               "`cache_latents`: true with `latent_cache`: 'memory' caches one view per image, so `random_flip`: true "
               "would never flip; set latent_cache=disk (which caches both flips), random_flip=false, or "
               "cache_latents=false.")
        _check(not (self.latent_cache == "disk" and not self.cache_latents),
               "`latent_cache`: 'disk' is where `cache_latents` keeps its cache; set cache_latents=true, or "
               "latent_cache=memory.")
        if self.streaming:
            _check(self.dataset_name != "shapes",
                   "`streaming`: true reads shards, and the built-in shapes dataset is drawn in memory; write it as "
                   "shards (python scripts/make_shards.py shapes DIR ...) and set dataset_name=DIR, or "
                   "streaming=false.")
            _check(not (self.aspect_ratio_buckets or self.bucket_sizes),
                   "`streaming`: true cannot be combined with aspect-ratio bucketing (`aspect_ratio_buckets` / "
                   "`bucket_sizes`), which needs every image's size before the first batch; use streaming=false.")
            _check(self.on_bad_image == "stop",
                   "`on_bad_image`: 'skip' needs a pass over every image before training; with `streaming`: true an "
                   "unreadable image stops the run, naming its shard and row. Set on_bad_image=stop.")
            _check(self.max_train_samples is None,
                   f"`max_train_samples`: {self.max_train_samples} picks a random subset of a loaded dataset; with "
                   "`streaming`: true write fewer shards instead (scripts/make_shards.py), or streaming=false.")
            _check(not self.with_prior_preservation,
                   "`with_prior_preservation`: true pairs every batch with class images from a loaded dataset; with "
                   "`streaming`: true use streaming=false.")
            _check(not (self.cache_latents and self.latent_cache == "memory"),
                   "`cache_latents`: true with `latent_cache`: 'memory' holds the whole dataset's latents in memory, "
                   "which `streaming`: true is for avoiding; set latent_cache=disk.")
        # The shapes dataset is drawn square at `resolution`, so its crop is the whole image either way.
        _check(not (self.cache_latents and not self.center_crop and self.dataset_name not in BUILTIN_DATASETS),
               "`cache_latents`: true caches one view per image, so the random crop of `center_crop`: false would "
               "always be the center one; set center_crop=true, or cache_latents=false to keep random crops.")
        _check(self.eval_steps is None or self.dataset_name == "shapes",
               f"`eval_steps`: {self.eval_steps} runs the shapes judge, which reads the built-in shapes grammar; it "
               f"needs `dataset_name`: 'shapes' (got dataset_name={self.dataset_name!r}, "
               f"train_data_dir={self.train_data_dir!r}), or set eval_steps=none.")
        num_train_timesteps = self.scheduler_config.get("num_train_timesteps", 1000)
        for key in ("num_inference_steps", "eval_num_inference_steps"):
            _check(getattr(self, key) <= num_train_timesteps,
                   f"`{key}`: {getattr(self, key)} cannot be larger than "
                   f"`scheduler_config.num_train_timesteps`: {num_train_timesteps}.")
        for key, top_level in (("prediction_type", "prediction_type"), ("rescale_betas_zero_snr", "zero_terminal_snr")):
            _check(key not in self.scheduler_config,
                   f"`scheduler_config.{key}`: set the top-level `{top_level}` instead, so training and the "
                   "saved scheduler agree.")
        for key in _TOKENIZER_KEYS:
            _check(key not in self.text_encoder_config,
                   f"`text_encoder_config.{key}`: taken from the tokenizer; remove it from text_encoder_config.")

        sizes = {key: [parse_size(text, key) for text in getattr(self, key)]
                 for key in ("bucket_sizes", "validation_resolutions")}  # fmt: skip

        # 4. Shapes that must agree between parts built from their config dicts (pretrained parts are checked
        #    once loaded, by training.models.check_compatible).
        factor = self.vae_downsampling_factor
        multiple = self.latent_multiple
        if multiple is not None:
            check_buckets(sizes["bucket_sizes"], multiple)
        if factor is not None:
            check_buckets(sizes["validation_resolutions"], factor, "validation_resolutions")
        if factor is not None:
            _check(self.resolution % factor == 0,
                   f"`resolution`: {self.resolution} must be divisible by the VAE's downsampling factor {factor} "
                   f"(2 ** (len(vae_config.block_out_channels) - 1)).")
        unet, vae, text = self.unet_config, self.vae_config, self.text_encoder_config
        if not self.is_pretrained("unet") and not self.is_pretrained("text_encoder"):
            _check_equal("unet_config.cross_attention_dim", unet, "text_encoder_config.hidden_size", text)
        if not self.is_pretrained("unet") and not self.is_pretrained("vae"):
            _check_equal("unet_config.in_channels", unet, "vae_config.latent_channels", vae)
            if factor is not None and "sample_size" in unet:
                _check(unet["sample_size"] * factor == self.resolution,
                       f"`unet_config.sample_size`: {unet['sample_size']} must be `resolution` / VAE downsampling "
                       f"factor = {self.resolution} / {factor} = {self.resolution // factor}.")

    def _check_adapters(self) -> None:
        """The cross-field checks of `training_mode: lora` and DreamBooth's prior preservation."""
        lora = self.training_mode == "lora"
        _check(not (lora and self.train_text_encoder),
               "`train_text_encoder`: true trains the whole text encoder, which contradicts `training_mode`: 'lora' "
               "(a frozen base with adapters); set train_text_encoder_lora=true for adapters on the text encoder, "
               "or training_mode=full.")
        _check(not (self.train_text_encoder_lora and not lora),
               "`train_text_encoder_lora`: true needs `training_mode`: 'lora'.")
        if lora:
            missing = [part for part in ("unet", "text_encoder", "tokenizer", "vae") if not self.is_pretrained(part)]
            _check(not missing,
                   f"`training_mode`: 'lora' adapts a trained model, but the {', '.join(missing)} would be built from "
                   "scratch; set `pretrained_model_name_or_path` to the base model (a pipeline folder, an SD-format "
                   "folder or a Hub id), or the pretrained_<part> keys.")
        _check(not (self.with_prior_preservation and not self.class_prompts and not self.class_data_dir),
               "`with_prior_preservation`: true needs `class_prompts` (what the base model draws for the class "
               "images, e.g. [a photo of a dog]) or a `class_data_dir` of captioned class images.")
        _check(not (self.class_prompts and not self.with_prior_preservation),
               f"`class_prompts`: {self.class_prompts} are used only with `with_prior_preservation`: true.")
        _check(not (self.with_prior_preservation and not self.is_pretrained("unet")),
               "`with_prior_preservation`: true needs a pretrained model to draw the class images; set "
               "`pretrained_model_name_or_path`.")
        _check(not (self.with_prior_preservation and (self.aspect_ratio_buckets or self.bucket_sizes)),
               "`with_prior_preservation`: true pairs each training image with a class image in every batch, which "
               "aspect-ratio bucketing (one size per batch) cannot do; turn one of them off.")

    @property
    def latent_multiple(self) -> int | None:
        """What bucket sides must divide by: the VAE factor × the UNet's downsampling (2 ** (blocks - 1)), when both
        are built from their config dicts; for pretrained parts training.models.latent_multiple reads their configs."""
        factor = self.vae_downsampling_factor
        blocks = self.unet_config.get("block_out_channels")
        if factor is None or self.is_pretrained("unet") or self.is_pretrained("vae") or not blocks:
            return None
        return factor * 2 ** (len(blocks) - 1)

    @property
    def vae_downsampling_factor(self) -> int | None:
        """2 ** (number of VAE blocks - 1), when `vae_config` says; a pretrained VAE is checked once loaded."""
        blocks = self.vae_config.get("block_out_channels")
        return 2 ** (len(blocks) - 1) if isinstance(blocks, (list, tuple)) and blocks else None

    def pretrained_source(self, part: str) -> tuple[str | None, str | None, str | None]:
        """Where `part` ("unet", "vae", "text_encoder", "tokenizer", "scheduler") is loaded from: (path or Hub id,
        subfolder, the config key that named it), or (None, None, None) when it is built from its `<part>_config`.
        Its own `pretrained_<part>` key (with `<part>_subfolder`) wins over `pretrained_model_name_or_path`, whose
        diffusers layout has the part in the subfolder named after it (the scheduler has no key of its own)."""
        own = getattr(self, f"pretrained_{part}", None)
        if own:
            return own, getattr(self, f"{part}_subfolder", None), f"pretrained_{part}"
        if self.pretrained_model_name_or_path:
            return self.pretrained_model_name_or_path, part, "pretrained_model_name_or_path"
        return None, None, None

    def is_pretrained(self, part: str) -> bool:
        return self.pretrained_source(part)[0] is not None


# ---- the sets the field metadata defines (see `_key`) ------------------------------------------------------------------
def _keys(resumable: bool | None = None, stage: str | None = None) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(TrainConfig)
                     if (resumable is None or f.metadata.get(_RUN, False) == resumable)
                     and (stage is None or f.metadata.get(_STAGE, "both") == stage))  # fmt: skip


# Keys a resumed diffusion run may change: run management, and what only the VAE stage reads.
RESUMABLE_CHANGES = _keys(resumable=True) | _keys(stage="vae")
# Keys only the diffusion stage reads (the VAE stage never does).
DIFFUSION_ONLY_KEYS = _keys(stage="diffusion")
# Keys a resumed VAE run may change: run management, and what only the diffusion stage reads.
VAE_RESUMABLE_CHANGES = _keys(resumable=True) | DIFFUSION_ONLY_KEYS


# ---- loading and saving ----------------------------------------------------------------------------------------------


class _YAMLLoader(yaml.SafeLoader):
    """YAML with 1.2 scalars: only true/false are booleans (PyYAML's 1.1 reads `no` as False, which would turn
    `mixed_precision: no` into a bool) and `1e-4` is a float (1.1 requires a dot: `1.0e-4`)."""


_YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
_YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


class _YAMLDumper(yaml.SafeDumper):
    """Quotes every string that either YAML 1.1 or our loader would read as something else ("no", "1e-3")."""


_YAMLDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides (a leading `--` is allowed)."""
    hints = _field_types()
    values: dict[str, Any] = {}
    if path is not None:
        for key, value in _read_yaml(path).items():
            _check_known(key, hints, f" (in {path})")
            values[key] = _from_yaml(key, value, hints[key])
    for override in overrides:
        _apply_override(values, override, hints)
    return TrainConfig(**values)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML that `load_config` reads back to an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved sculpt TrainConfig: repeat this run with `--config <this file>`.\n"
    path.write_text(header + yaml.dump(config_to_dict(config), Dumper=_YAMLDumper, sort_keys=False, allow_unicode=True))


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.load(path.read_text(), Loader=_YAMLLoader)
    except yaml.YAMLError as error:
        raise ValueError(f"Config file {str(path)!r} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def _apply_override(values: dict[str, Any], override: str, hints: dict[str, Any]) -> None:
    key, sep, text = override.removeprefix("--").partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"Override {override!r} must look like key=value (e.g. learning_rate=3e-4).")
    name, *path = key.split(".")
    _check_known(name, hints)
    if not path:
        if not text.strip():  # `key=`: unset it, back to the default (over a YAML file that sets it)
            values.pop(name, None)
            return
        values[name] = _parse_string(name, text, hints[name])
        return
    # Dotted key: set one entry of a dict field (creating intermediate dicts), starting from its current value.
    if not _is_dict_type(hints[name]):
        dict_fields = ", ".join(k for k, tp in hints.items() if _is_dict_type(tp))
        raise ValueError(f"Override {override!r}: `{name}` is not a dict field; dotted keys go into {dict_fields}.")
    if name not in values:
        values[name] = _default_value(name)
    node = values[name]
    for i, part in enumerate(path[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"Override {override!r}: `{'.'.join([name, *path[: i + 1]])}` is not a dict.")
    value = yaml.load(text, Loader=_YAMLLoader) if text.strip() else ""
    node[path[-1]] = None if isinstance(value, str) and value.lower() in ("none", "null") else value


def _default_value(name: str) -> Any:
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else copy.deepcopy(f.default)


def _check_known(key: str, hints: dict[str, Any], where: str = "") -> None:
    if key in hints:
        return
    close = difflib.get_close_matches(key, hints, n=1)
    suggestion = f" Did you mean `{close[0]}`?" if close else ""
    raise ValueError(f"Unknown config key `{key}`{where}.{suggestion} Allowed keys: {', '.join(hints)}.")


# ---- types -----------------------------------------------------------------------------------------------------------


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _split_optional(tp) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `X | None`."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(args) == 1, f"unsupported field type {tp}"  # schema invariant: only `X | None` unions
        return args[0], True
    return tp, False


def _is_dict_type(tp) -> bool:
    return typing.get_origin(_split_optional(tp)[0]) is dict


def _list_item_type(tp) -> type:
    """str or float: the element type of a list field."""
    (item,) = typing.get_args(_split_optional(tp)[0])
    assert item in (str, float), f"unsupported list element type {item}"  # schema invariant
    return item


def _type_name(tp) -> str:
    inner, optional = _split_optional(tp)
    name = "dict" if typing.get_origin(inner) is dict else getattr(inner, "__name__", str(inner))
    if typing.get_origin(inner) is list:
        name = f"list[{_list_item_type(tp).__name__}]"
    return f"{name} | None" if optional else name


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_error(key: str, value: Any, tp, hint: str = "") -> ValueError:
    return ValueError(f"`{key}`: {value!r} is not a valid {_type_name(tp)}.{hint}")


def _check_type(key: str, value: Any, tp) -> Any:
    """Validate a typed value against the field type; int promotes to float, a tuple of strings to a list."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise _type_error(key, value, tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        ok = isinstance(value, bool)
    elif inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif inner is float:
        ok = _is_number(value)
        value = float(value) if ok else value
    elif inner is str:
        ok = isinstance(value, str)
    elif origin is list:
        item_ok = (lambda v: isinstance(v, str)) if _list_item_type(tp) is str else _is_number
        ok = isinstance(value, (list, tuple)) and all(item_ok(v) for v in value)
        value = [v if _list_item_type(tp) is str else float(v) for v in value] if ok else value
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        raise AssertionError(f"unsupported field type {tp} for `{key}`")  # schema invariant
    if not ok:
        raise _type_error(key, value, tp)
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_string(key: str, text: str, tp) -> Any:
    """A command-line string → the field's type (then checked by `_check_type` in `__post_init__`)."""
    inner, optional = _split_optional(tp)
    stripped = text.strip()
    if optional and stripped.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(inner)
    if inner is str:
        return text
    if inner is bool:
        if stripped.lower() in _TRUE + _FALSE:
            return stripped.lower() in _TRUE
        raise _type_error(key, text, tp, " Use true/false, 1/0 or yes/no.")
    if inner in (int, float):
        try:
            return inner(stripped.replace("_", ""))
        except ValueError:
            raise _type_error(key, text, tp) from None
    if origin is list:
        if not stripped:
            return []
        if stripped.startswith("["):
            try:  # BaseLoader keeps every scalar a string: [yes, 1] → ["yes", "1"]
                items = yaml.load(stripped, Loader=yaml.BaseLoader)
            except yaml.YAMLError:
                raise _type_error(key, text, tp, " Use YAML [a, b] or a,b.") from None
        else:
            items = [part.strip() for part in stripped.split(",")]
        if _list_item_type(tp) is float and isinstance(items, list):
            try:
                return [float(item.replace("_", "")) for item in items]
            except (AttributeError, ValueError):
                raise _type_error(key, text, tp, " Use numbers: [1, 3.5] or 1,3.5.") from None
        return items
    if origin is dict:
        try:
            value = yaml.load(stripped, Loader=_YAMLLoader)
        except yaml.YAMLError:
            value = text
        if not isinstance(value, dict):
            raise _type_error(key, text, tp, " Use YAML flow syntax, e.g. {a: 1, b: [2, 3]}.")
        return value
    raise AssertionError(f"unsupported field type {tp} for `{key}`")  # schema invariant


def _from_yaml(key: str, value: Any, tp) -> Any:
    """YAML already typed the value; strings for non-string fields ("none", "yes") get the command-line parsing."""
    inner, optional = _split_optional(tp)
    if isinstance(value, str) and (inner is not str or (optional and value.strip().lower() in ("none", "null"))):
        return _parse_string(key, value, tp)
    return value


# ---- checks ----------------------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"`{key}`: {value!r} is not one of {', '.join(repr(a) for a in allowed)}.")


def _check_equal(key_a: str, dict_a: dict, key_b: str, dict_b: dict) -> None:
    a, b = dict_a.get(key_a.split(".")[-1]), dict_b.get(key_b.split(".")[-1])
    _check(a is None or b is None or a == b, f"`{key_a}`: {a} must equal `{key_b}`: {b}.")
