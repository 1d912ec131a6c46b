"""Share a trained pipeline folder: its model card (README.md) and its push to the Hugging Face Hub.

    write_model_card(output_dir, config, images)   the final training save (main process)
    check_push(repo_id)                            before training when `push_to_hub` is set, and before any upload
    push_folder(folder, repo_id)                   the end of training (main process) and scripts/push_to_hub.py

The card is huggingface_hub's `ModelCard.from_template` over `ModelCardData` (YAML metadata: library_name diffusers,
pipeline_tag text-to-image, license, tags via diffusers' `populate_model_card`, datasets, base_model, a widget of the
validation images) with our template: a snippet that loads the folder with diffusers alone, the hyperparameters, the
validation grid and what the model cannot do, all read from the folder and the run's config. diffusers'
`load_or_create_model_card` reads an existing card back at push time.

A push uploads only the portable pipeline (model_index.json, the pipeline's .py, the component folders, the demo's
app.py), the card and the run's record (config.yaml, samples, loss curve); never checkpoints, logs or temporary
files. It reads the folder and never writes to it: every error leaves the folder as it was. Everything that can be
checked is checked before the first request that changes the Hub (folder, token, reachability, namespace), and before
training when the config asks for a push. Errors are one line: `ValueError` / `FileNotFoundError` for what the user must fix, `PushError`
for what the Hub or the network did.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from diffusers.utils import logging

from pipelines.latents import vae_scale_factor
from pipelines.loading import PICKLE_SUFFIXES, folder_pickle_only, is_hub_id, is_repo_id

from .builtin import dataset_license
from .builtin.shapes import BACKGROUNDS, CAPTION_TEMPLATE, COLORS, SHAPES, SIZES
from .config import BUILTIN_DATASETS, TrainConfig, load_config
from .errors import PushError

logger = logging.get_logger(__name__)  # not accelerate's: scripts/push_to_hub.py runs without an Accelerator

CARD_TAGS = ["text-to-image", "diffusers", "latent-diffusion", "sculpt"]
SAMPLES_DIR = "samples"  # one PNG per validation image, for the card's widget (the captioned grid is samples.png)
# The run's record, uploaded with the pipeline when present; everything else outside the pipeline stays local.
RECORD_FILES = ("README.md", "config.yaml", "samples.png", "loss.png", "loss_history.json")
DEMO_FILES = ("app.py", "requirements.txt")  # the browser demo `save_pretrained` ships (pipelines/app.py)
_TEMPORARY = re.compile(r"(\.tmp|\.lock|\.incomplete|\.partial|~)$|^\.|^__pycache__$")
_USAGE = re.compile(r"(<!-- sculpt:usage -->.*?from_pretrained\()\"[^\"]*\"(.*?<!-- /sculpt:usage -->)", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

<!-- sculpt:model-card: written by sculpt from this folder's config.yaml, images and loss history. -->

{{ description }}

## Use it

<!-- sculpt:usage -->
```python
{{ snippet }}
```
<!-- /sculpt:usage -->

`trust_remote_code=True` is needed because the pipeline and its scheduler ship as code in this repository
({{ code_files }}): diffusers runs these files to build the pipeline, so read them first. They import only torch,
diffusers and transformers (and numpy, Pillow and huggingface_hub, which diffusers needs): sculpt need not be
installed. With sculpt installed, `{{ class_name }}.from_pretrained(...)` loads the same folder with the installed
code instead.

## Try it in a browser

`pip install gradio && python app.py` serves a demo of this model (text to image, image to image, inpainting) at
http://127.0.0.1:7860. With `app.py` and `requirements.txt` this folder is also a Hugging Face Space: push it to a
Space repo, with `sdk: gradio` added to the YAML header above.

## Validation images

{{ validation }}

## Training

{{ training }}

## Limitations: what this model cannot do

{{ limitations }}
"""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pretrained_sources(config: TrainConfig) -> dict[str, str]:
    """The pretrained parts of the run and where each came from (a folder or a Hub id)."""
    sources = {part: config.pretrained_source(part)[0] for part in ("unet", "vae", "text_encoder", "tokenizer")}
    return {part: source for part, source in sources.items() if source}


def _snippet(model: str, prompt: str, steps: int, guidance: float, seed: int) -> str:
    return (
        "import torch\n"
        "from diffusers import DiffusionPipeline\n\n"
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(model)}, trust_remote_code=True)\n"
        f"image = pipe(\n    {json.dumps(prompt)},\n    num_inference_steps={steps},\n"
        f"    guidance_scale={guidance},\n    generator=torch.Generator().manual_seed({seed}),\n).images[0]\n"
        'image.save("sample.png")'
    )


def _training_section(config: TrainConfig, folder: Path, num_processes: int | None) -> str:
    processes = num_processes or config.num_processes
    rows = [
        ("data", _data_description(config)),
        ("resolution", f"{config.resolution} px"),
        ("steps", config.max_train_steps),
        ("batch", f"{config.train_batch_size} per process × {processes or '?'} process(es) × "
                  f"{config.gradient_accumulation_steps} accumulation step(s)"
                  + (f" = {config.train_batch_size * processes * config.gradient_accumulation_steps}" if processes
                     else "")),
        ("optimizer", f"AdamW, lr {config.learning_rate:g}{' (scaled by the batch)' if config.scale_lr else ''}, "
                      f"betas ({config.adam_beta1}, {config.adam_beta2}), weight decay {config.adam_weight_decay:g}, "
                      f"eps {config.adam_epsilon:g}, grad-norm clip {config.max_grad_norm:g}"),
        ("learning-rate schedule", f"{config.lr_scheduler}, {config.lr_warmup_steps} warmup steps"),
        ("objective", f"{config.prediction_type} prediction"
                      + (", zero terminal SNR" if config.zero_terminal_snr else "")
                      + (f", Min-SNR-γ {config.snr_gamma:g}" if config.snr_gamma else ", plain MSE")
                      + (f", noise offset {config.noise_offset:g}" if config.noise_offset else "")),
        ("classifier-free guidance", f"caption dropout {config.cfg_dropout:g}"),
        ("EMA", f"decay {config.ema_decay:g}" + (" with warmup" if config.ema_warmup else "") if config.use_ema
                else "off"),
        ("text encoder", "trained with the UNet" if config.train_text_encoder else "frozen"),
        ("mixed precision", config.mixed_precision),
        ("seed", config.seed),
    ]
    history = _read_json(folder / "loss_history.json")
    if history:
        tail = history[-max(1, len(history) // 10):]
        rows.append(("final loss", f"{sum(h['loss'] for h in tail) / len(tail):.4f} (mean of the last {len(tail)} "
                                   "steps)"))
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    loss_plot = "\n\n![training loss](loss.png)" if (folder / "loss.png").is_file() else ""
    notice = dataset_license(config)
    notice = f"\n\n### Training data: licence and attribution\n\n{notice}" if notice else ""
    return (
        "| setting | value |\n| --- | --- |\n" + table + "\n\nThe full resolved configuration is `config.yaml` in this "
        "folder: sculpt's `python scripts/train.py --config config.yaml` repeats the run."
        + loss_plot + notice
    )


def _data_description(config: TrainConfig) -> str:
    if config.dataset_name == "shapes":
        return (f"sculpt's built-in synthetic shapes dataset, {config.num_shapes_samples} images "
                f"(dataset seed {config.dataset_seed})")
    if config.dataset_name == "emoji":
        skin = "with" if config.emoji_skin_tones else "without"
        groups = f", groups {', '.join(config.emoji_groups)}" if config.emoji_groups else ""
        excluded = f", without {', '.join(config.emoji_exclude_groups)}" if config.emoji_exclude_groups else ""
        return (f"sculpt's built-in emoji dataset ({' and '.join(config.emoji_styles)} style, {skin} skin-tone "
                f"variants{groups}{excluded}, on {config.emoji_background}; captions are Unicode's CLDR short names)")
    if config.dataset_name == "digits":
        return (f"sculpt's built-in handwritten digits (scikit-learn's 8×8 digits upsampled to {config.resolution} px, "
                f"{config.digits_test_per_class} per class held out; captions \"a handwritten digit <name>\")")
    if config.dataset_name:
        subset = f" ({config.max_train_samples} samples)" if config.max_train_samples else ""
        return f"`{config.dataset_name}`{subset}"
    return "an image folder with captions (`train_data_dir`)"


def _validation_section(config: TrainConfig, folder: Path) -> str:
    if not config.validation_prompts or not (folder / "samples.png").is_file():
        return "No validation prompts were set for this run, so there are no validation images."
    seed = config.validation_seed if config.validation_seed is not None else config.seed
    prompts = "\n".join(f"- {prompt}" for prompt in config.validation_prompts)
    return (
        f"The final weights{' (EMA)' if config.use_ema else ''}, {config.num_validation_images} image(s) per prompt, "
        f"{config.num_inference_steps} steps of the DDPM scheduler, guidance scale {config.guidance_scale:g}, "
        f"seed {seed}:\n\n{prompts}\n\n![validation images](samples.png)"
    )


def _limitations(config: TrainConfig | None, resolution: int | None) -> str:
    items = []
    if resolution:
        items.append(f"It generates {resolution}×{resolution} images. Other sizes run (multiples of the VAE's "
                     "downsampling factor) but were never trained.")
    if config is not None and config.dataset_name == "shapes":
        colors = list(dict.fromkeys([*COLORS, *config.shapes_colors]))  # an adapter's new values beside the base's
        backgrounds = list(dict.fromkeys([*BACKGROUNDS, *config.shapes_backgrounds]))
        items.append(
            "It knows only the captions of the shapes dataset: "
            f"\"{CAPTION_TEMPLATE}\" with size {'/'.join(SIZES)}, colour {'/'.join(colors)}, shape "
            f"{'/'.join(SHAPES)} and background {'/'.join(backgrounds)}. Any other prompt is outside what it saw; "
            "it draws one shape on a flat background, nothing else."
        )
    elif config is not None:
        items.append("It knows only what the captions of its training data describe; it was not evaluated on "
                     "anything else.")
    if config is not None and not (config.pretrained_tokenizer or config.pretrained_model_name_or_path):
        items.append(f"Its tokenizer was learned from the training captions (at most {config.tokenizer_vocab_size} "
                     "tokens): words outside them split into byte-level pieces the text encoder never saw in context.")
    if config is not None and not (config.pretrained_vae or config.pretrained_model_name_or_path):
        items.append("Its autoencoder was not trained (no `pretrained_vae`): a randomly initialised, frozen "
                      "AutoencoderKL decodes the latents, so images are not meant to look like the data. Such a "
                      "model exercises the machinery; train a VAE (scripts/train_vae.py) for real use.")
    if config is not None and config.max_train_steps < 10_000:
        items.append(f"It trained for {config.max_train_steps} steps only.")
    items.append("It has no safety checker and was not evaluated for bias or misuse; it is an experiment, not a "
                 "product.")
    return "\n".join(f"- {item}" for item in items)


def build_model_card(
    folder: str | Path, config: TrainConfig | None = None, model_id: str | None = None, num_processes: int | None = None
):
    """The model card of the pipeline in `folder`: for a training run's folder when `config` is given (its settings,
    validation images and loss), else a card with the usage and limits only. `model_id` is what the snippet loads:
    a Hub repo id, or by default the folder's absolute path. `num_processes`: the run's, when known."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    index = _read_json(folder / "model_index.json") or {}
    stem, class_name = (index.get("_class_name") or ["pipeline", "LatentDiffusionPipeline"])[:2]
    unet = _read_json(folder / "unet" / "config.json") or {}
    vae = _read_json(folder / "vae" / "config.json") or {}
    resolution = None
    if unet.get("sample_size") and vae.get("block_out_channels"):
        resolution = unet["sample_size"] * vae_scale_factor(vae)
    code_files = [f"{stem}.py"] + [
        f"{name}/{entry[0]}.py" for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and (folder / name / f"{entry[0]}.py").is_file()
    ]

    prompt, steps, guidance, seed, widget = "a large red circle on a white background", 50, 7.5, 0, []
    base_models, datasets_ = [], None
    if config is not None:
        prompts = [p for p in config.validation_prompts for _ in range(config.num_validation_images)]
        samples = sorted((folder / SAMPLES_DIR).glob("*.png"))
        widget = [{"text": p, "output": {"url": f"{SAMPLES_DIR}/{s.name}"}} for p, s in zip(prompts, samples)]
        prompt = config.validation_prompts[0] if config.validation_prompts else prompt
        steps, guidance = config.num_inference_steps, config.guidance_scale
        seed = config.validation_seed if config.validation_seed is not None else config.seed
        base_models = sorted({s for s in _pretrained_sources(config).values() if is_hub_id(s)})
        if config.dataset_name not in BUILTIN_DATASETS and is_hub_id(config.dataset_name):
            datasets_ = [config.dataset_name]

    card_data = ModelCardData(
        license=config.model_license if config is not None else "other",
        library_name="diffusers",
        pipeline_tag="text-to-image",
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets_,
        widget=widget or None,
    )
    origin = (f"fine-tuned from {', '.join(f'`{b}`' for b in base_models)}" if base_models else
              "trained from scratch" if config is not None and not _pretrained_sources(config) else
              "trained from local pretrained parts" if config is not None else "saved")
    description = (
        f"A text-to-image latent diffusion model ({class_name}), {origin} with "
        "sculpt: a `UNet2DConditionModel` denoises `AutoencoderKL` latents, conditioned on a "
        "CLIP text encoder through cross-attention, sampled with classifier-free guidance and sculpt's DDPM "
        "scheduler (Ho et al. 2020, arXiv 2006.11239)."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=model_id.split("/")[-1] if model_id else folder.resolve().name,
        description=description,
        snippet=_snippet(model_id or str(folder.resolve()), prompt, steps, guidance, seed),
        code_files=", ".join(f"`{f}`" for f in code_files),
        class_name=class_name,
        validation=_validation_section(config, folder) if config is not None else
                   "This folder was not written by a training run, so there are no validation images.",
        training=_training_section(config, folder, num_processes) if config is not None else "Not recorded.",
        limitations=_limitations(config, resolution),
    )
    return populate_model_card(card, tags=CARD_TAGS)


def write_model_card(
    output_dir: str | Path, config: TrainConfig, images: list, num_processes: int | None = None
) -> Path:
    """The final training save: one PNG per validation image under samples/ (the card's widget), then README.md (a
    LoRA's card with `training_mode: lora`)."""
    output_dir = Path(output_dir)
    for stale in (output_dir / SAMPLES_DIR).glob("*.png"):  # an earlier run's (overwrite_output_dir)
        stale.unlink()
    if images:
        (output_dir / SAMPLES_DIR).mkdir(exist_ok=True)
        for index, image in enumerate(images):
            image.save(output_dir / SAMPLES_DIR / f"{index:03d}.png")
    model_id = config.hub_model_id if config.push_to_hub else None
    path = output_dir / "README.md"
    build = build_lora_card if config.training_mode == "lora" else build_model_card
    build(output_dir, config, model_id, num_processes).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# A LoRA's card
# ---------------------------------------------------------------------------------------------------------------------
LORA_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

<!-- sculpt:model-card: written by sculpt from this folder's config.yaml, images and loss history. -->

{{ description }}

- base model: {{ base }}
- licence: {{ license_note }}
- trigger words: {{ triggers }}
- adapter: {{ adapter }}

## Use it

<!-- sculpt:lora-usage -->
```python
{{ snippet }}
```
<!-- /sculpt:lora-usage -->

`cross_attention_kwargs={"scale": s}` sets the LoRA's strength per call (0 is the base model); `pipe.fuse_lora(
lora_scale=s)` bakes it in. The file is in diffusers' format and also loads in diffusers' `StableDiffusionPipeline`;
for A1111 / ComfyUI convert it with sculpt's `python scripts/export_lora.py {{ file }} --format kohya --out lora.safetensors`.

## Validation images

{{ validation }}

## Training

{{ training }}

## Limitations: what this adapter cannot do

{{ limitations }}
"""
_LORA_USAGE = re.compile(r"(<!-- sculpt:lora-usage -->.*?load_lora_weights\()\"[^\"]*\"(.*?<!-- /sculpt:lora-usage -->)",
                         re.DOTALL)


def base_license(base: str | None) -> str | None:
    """The `license:` of the base model's card (a local folder's README.md, or the Hub repo's, cached or fetched),
    or None when it has none or cannot be read."""
    if not base:
        return None
    from huggingface_hub import ModelCard

    local = Path(base).expanduser()
    try:
        card = ModelCard.load(local / "README.md") if local.is_dir() else ModelCard.load(base)
    except Exception:  # noqa: BLE001 - no card, no network: the licence is then unknown, which the card says
        return None
    return card.data.license


def _lora_snippet(base: str, base_is_sculpt: bool, lora: str, prompt: str, steps: int, guidance: float, seed: int,
                  ) -> str:  # fmt: skip
    remote = ", trust_remote_code=True" if base_is_sculpt else ""
    return (
        "import torch\n"
        "from diffusers import DiffusionPipeline\n\n"
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(base)}{remote})\n"
        f"pipe.load_lora_weights({json.dumps(lora)})\n"
        f"image = pipe(\n    {json.dumps(prompt)},\n    num_inference_steps={steps},\n    guidance_scale={guidance},\n"
        '    cross_attention_kwargs={"scale": 1.0},\n'
        f"    generator=torch.Generator().manual_seed({seed}),\n).images[0]\n"
        'image.save("sample.png")'
    )


def build_lora_card(folder: str | Path, config: TrainConfig, model_id: str | None = None,
                    num_processes: int | None = None):  # fmt: skip
    """The card of the LoRA adapter in `folder` (pytorch_lora_weights.safetensors) trained with `config`: the base
    model it adapts, its licence (the base's, unless `model_license` says otherwise), the trigger words, a snippet
    that loads the base and the adapter, the validation images and the training settings."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    from .lora import LORA_WEIGHTS, trigger_words

    folder = Path(folder)
    base, _, _ = config.pretrained_source("unet")
    base = config.pretrained_model_name_or_path or base
    base_is_sculpt = _ships_its_code(base)
    inherited = base_license(base)
    license_id = config.model_license if config.model_license != "other" else (inherited or "other")
    license_note = (f"{license_id} (the base model's)" if inherited and license_id == inherited else
                    f"{license_id}" + (f"; the base model's is {inherited}, whose terms also bind this adapter"
                                       if inherited else "; the base model's card names none"))  # fmt: skip
    triggers = trigger_words(config)
    prompt = config.validation_prompts[0] if config.validation_prompts else (config.instance_prompt or "a prompt")
    seed = config.validation_seed if config.validation_seed is not None else config.seed
    weights = folder / LORA_WEIGHTS
    size = weights.stat().st_size if weights.is_file() else 0
    targets = ", ".join(config.lora_target_modules) + (" + the text encoder's q/k/v/out_proj"
                                                        if config.train_text_encoder_lora else "")  # fmt: skip
    prompts = [p for p in config.validation_prompts for _ in range(config.num_validation_images)]
    samples = sorted((folder / SAMPLES_DIR).glob("*.png"))
    widget = [{"text": p, "output": {"url": f"{SAMPLES_DIR}/{s.name}"}} for p, s in zip(prompts, samples)]
    card_data = ModelCardData(
        license=license_id, library_name="diffusers", pipeline_tag="text-to-image",
        base_model=base if is_hub_id(base) else None, instance_prompt=config.instance_prompt,
        widget=widget or None,
    )  # fmt: skip
    card = ModelCard.from_template(
        card_data,
        template_str=LORA_TEMPLATE,
        title=model_id.split("/")[-1] if model_id else folder.resolve().name,
        description=(f"A LoRA adapter (Hu et al. 2021, arXiv 2106.09685) for `{base}`, trained with sculpt: "
                     "low-rank updates ΔW = (α / r) B A of the base's frozen layers, loaded on top of the base."),
        base=f"`{base}`",
        license_note=license_note,
        triggers=", ".join(f"`{t}`" for t in triggers) if triggers else "none: it follows its training captions",
        adapter=(f"rank {config.lora_rank}, α {config.lora_alpha if config.lora_alpha is not None else config.lora_rank:g}"
                 f", on {targets}; `{LORA_WEIGHTS}`, {size / 1024:.1f} kB"),
        snippet=_lora_snippet(base, base_is_sculpt, model_id or str(folder.resolve()), prompt,
                              config.num_inference_steps, config.guidance_scale, seed),
        file=LORA_WEIGHTS,
        validation=_validation_section(config, folder),
        training=_training_section(config, folder, num_processes),
        limitations=_lora_limitations(config, base),
    )  # fmt: skip
    return populate_model_card(card, tags=[*CARD_TAGS, "lora"])


def _ships_its_code(base: str) -> bool:
    """Whether the base's model_index.json names its pipeline as (file, class): a sculpt folder, loaded with
    `trust_remote_code=True`. A Hub id whose index cannot be read is taken as one (the flag is harmless otherwise)."""
    local = Path(base).expanduser()
    if local.is_dir():
        index = _read_json(local / "model_index.json") or {}
    else:
        try:
            from huggingface_hub import hf_hub_download

            index = json.loads(Path(hf_hub_download(base, "model_index.json")).read_text())
        except Exception:  # noqa: BLE001 - offline, gated, missing: unknown
            return True
    return isinstance(index.get("_class_name"), list)


def _lora_limitations(config: TrainConfig, base: str) -> str:
    items = [f"It is an adapter, not a model: it needs its base, `{base}`, and does nothing on another one (loading "
             "it into a model of other layer shapes is refused).",
             "What the base cannot draw, it can only learn from its own training images; it was evaluated on "
             "nothing but what its validation images show unless its folder holds an eval.json.",
             f"It trained for {config.max_train_steps} steps."]
    if config.with_prior_preservation:
        source = config.class_prompts or f"`{config.class_data_dir}`"
        items.append(f"Prior preservation kept {config.num_class_images} images of {source} in view.")
    items.append("It has no safety checker and was not evaluated for bias or misuse.")
    return "\n".join(f"- {item}" for item in items)


def card_for_push(folder: Path, repo_id: str):
    """The card to upload for `repo_id`: the folder's README.md read back with diffusers' `load_or_create_model_card`,
    with the snippet pointed at the repo (between the sculpt:usage comments; a card without them goes up unchanged),
    or a new card when the folder has none (rebuilt from its config.yaml when it is a training run's folder)."""
    from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

    readme = folder / "README.md"
    if readme.is_file():
        card = load_or_create_model_card(str(readme))
        card.text = _USAGE.sub(lambda m: f'{m[1]}"{repo_id}"{m[2]}', card.text)
        card.text = _LORA_USAGE.sub(lambda m: f'{m[1]}"{repo_id}"{m[2]}', card.text)
        known = set(card.data.tags or [])
        return populate_model_card(card, tags=[t for t in CARD_TAGS if t not in known])
    config = load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    if config is not None and config.training_mode == "lora":
        return build_lora_card(folder, config, repo_id)
    return build_model_card(folder, config, repo_id)


# ---------------------------------------------------------------------------------------------------------------------
# The push
# ---------------------------------------------------------------------------------------------------------------------
def _is_temporary(path: Path) -> bool:
    return any(_TEMPORARY.search(part) for part in path.parts)


def pipeline_files(folder: str | Path) -> list[str]:
    """The files a push uploads, relative to `folder`; a `ValueError` naming the problem when `folder` is not a
    self-contained pipeline folder (checked before any request)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`folder`: {str(folder)!r} is not a directory.")
    index_path = folder / "model_index.json"
    from .lora import LORA_WEIGHTS

    if not index_path.is_file() and (folder / LORA_WEIGHTS).is_file():  # a LoRA run's folder: the adapter and its record
        files = [LORA_WEIGHTS] + [name for name in RECORD_FILES if (folder / name).is_file()]
        return files + [p.relative_to(folder).as_posix() for p in sorted((folder / SAMPLES_DIR).glob("*.png"))]
    if not index_path.is_file():
        raise ValueError(f"`folder`: {str(folder)!r} has no model_index.json, so it is not a pipeline folder; save one "
                         "with `pipe.save_pretrained(folder)` or train one with scripts/train.py.")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    class_name = index.get("_class_name")
    resave = (f"re-save it with `LatentDiffusionPipeline.from_pretrained({str(folder)!r})"
              f".save_pretrained({str(folder)!r})`.")
    if not (isinstance(class_name, list) and (folder / f"{class_name[0]}.py").is_file()):
        raise ValueError(f"`folder`: {str(folder)!r} does not carry its pipeline code (model_index.json `_class_name` "
                         f"is {class_name!r}), so it would not load without sculpt; {resave}")
    files = ["model_index.json", f"{class_name[0]}.py"]
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        component = folder / name
        if not component.is_dir():
            raise ValueError(f"`folder`: {str(folder)!r} lists the component `{name}` but has no {name}/ folder.")
        if entry[0] not in ("diffusers", "transformers") and not (component / f"{entry[0]}.py").is_file():
            raise ValueError(f"`folder`: {name}/{entry[0]}.py is missing (model_index.json names it); {resave}")
        pickled = folder_pickle_only(component)
        if pickled:
            raise ValueError(f"`folder`: {name}/ holds pickle weights ({', '.join(pickled)}) and no safetensors; "
                             "re-save with `safe_serialization=True`.")
        files += [p.relative_to(folder).as_posix() for p in sorted(component.rglob("*"))
                  if p.is_file() and not _is_temporary(p.relative_to(folder)) and not p.name.endswith(PICKLE_SUFFIXES)]
    files += [name for name in (*RECORD_FILES, *DEMO_FILES) if (folder / name).is_file()]
    files += [p.relative_to(folder).as_posix() for p in sorted((folder / SAMPLES_DIR).glob("*.png"))]
    return files


@contextlib.contextmanager
def _hub_errors(action: str, endpoint: str):
    """huggingface_hub's errors (multi-line, several types) as one-line `PushError`s."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise PushError(f"{action}: offline mode is on (HF_HUB_OFFLINE=1); unset it to reach {endpoint}.") from None
    except httpx2.TransportError as error:
        raise PushError(f"{action}: cannot reach {endpoint} ({type(error).__name__}: {error}); check the network "
                        "connection (or HF_ENDPOINT).") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        reason = " ".join(str(error.server_message or error).split())
        if status == 401:
            raise PushError(f"{action}: {endpoint} rejected the token (401: {reason}); log in again with "
                            "`hf auth login` or set HF_TOKEN.") from None
        raise PushError(f"{action}: {endpoint} answered {status}: {reason}") from None


def check_push(repo_id: str, endpoint: str | None = None) -> str:
    """Check that a push to `repo_id` can work before anything is uploaded (or trained): a token is configured,
    the Hub accepts it with write access, and the repo's namespace is the user's or one of their organizations'
    (huggingface_hub's `create_repo(exist_ok=True)` does not catch a repo someone else owns: it answers 403, then
    finds the public repo and returns as if all were well; the upload fails later). Returns "namespace/name"."""
    from huggingface_hub import HfApi, get_token

    if not is_repo_id(repo_id):
        raise ValueError(f"`repo_id`: {repo_id!r} is not a Hub repo id; use 'user/name' or 'name'.")
    token = get_token()
    if token is None:
        raise ValueError("No Hugging Face token found, so nothing can be pushed: log in with `hf auth login` or set "
                         "the HF_TOKEN environment variable.")
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors("checking the token", api.endpoint):
        me = api.whoami()
    role = (me.get("auth", {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ValueError(f"The Hugging Face token of {me['name']!r} is read-only; pushing needs a write token "
                         "(create one at huggingface.co/settings/tokens, then `hf auth login`).")
    namespace, _, name = repo_id.rpartition("/")
    namespace = namespace or me["name"]
    writable = [me["name"]] + [org["name"] for org in me.get("orgs", []) if org.get("roleInOrg") in
                               (None, "admin", "write", "contributor")]
    if namespace not in writable:
        raise ValueError(f"`repo_id`: {repo_id!r} belongs to {namespace!r}, where {me['name']!r} cannot write; choose "
                         f"a repo under {', '.join(repr(w) for w in writable)}.")
    return f"{namespace}/{name}"


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload the pipeline in `folder` with its card in one commit; returns the
    commit's URL. The folder is only read."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    folder = Path(folder)
    files = pipeline_files(folder)
    try:
        repo_id = check_push(repo_id, endpoint)
        card = card_for_push(folder, repo_id)
        api = HfApi(endpoint=endpoint, token=get_token())
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files
                      if f != "README.md"]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
        with _hub_errors(f"pushing {str(folder)!r} to {repo_id!r}", api.endpoint):
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.create_commit(
                repo_id, operations, commit_message=commit_message or f"Upload {folder.resolve().name} with sculpt"
            )
    except PushError as error:
        raise PushError(f"{error} The folder is unchanged; push it again with: python scripts/push_to_hub.py "
                        f"{folder} {repo_id}") from None
    logger.info(f"Pushed {len(operations)} files from {folder} to {info.commit_url}")
    return info.commit_url
