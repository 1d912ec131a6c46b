"""LoRA adapters for `training_mode: lora`: what training/train.py calls to set them up, checkpoint them and save them.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685) freezes a trained
weight W and learns ΔW = (α / r) · B A, A of shape (r, in) and B of shape (out, r), B starting at zero so that step 0
is the base model. The mechanism is diffusers' LoRA scripts' (examples/text_to_image/train_text_to_image_lora.py,
examples/dreambooth/train_dreambooth_lora.py): peft adapters through diffusers' integration (`unet.add_adapter(
LoraConfig(...))`), the optimizer on the adapters alone, `cast_training_params` under fp16, `get_peft_model_state_dict`
→ `convert_state_dict_to_diffusers` → the pipeline's `save_lora_weights`, and accelerate save/load hooks so that a
checkpoint holds the adapters rather than the whole frozen model:

    check_lora_config(config)           before anything is written: the target modules exist in the base model
    add_adapters(config, unet, te)      freeze the bases, inject the adapters (B = 0)
    register_checkpoint_hooks(...)      accelerate's save_state writes pytorch_lora_weights.safetensors, not the UNet
    make_adapter_ema(config, unet)      the EMA of the adapters only (AdapterEMA), or None
    save_lora_weights(output_dir, ...)  the final file, in diffusers' format, with its LoraConfig as metadata

The file loads with `LatentDiffusionPipeline.load_lora_weights` and diffusers' `StableDiffusionPipeline.
load_lora_weights` alike (pipelines/lora.py checks it fits), and converts to kohya's layout with scripts/export_lora.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from pipelines.lora import check_lora_state_dict

logger = get_logger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
# The text encoder's attention projections: what diffusers' DreamBooth LoRA script adapts in a CLIP text encoder.
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
_EMA_WEIGHTS, _EMA_STATE = "adapter_ema.safetensors", "adapter_ema.json"


def _lora_config(config, target_modules, rank: int | None = None):
    from peft import LoraConfig

    rank = rank or config.lora_rank
    return LoraConfig(
        r=rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else rank,
        lora_dropout=config.lora_dropout,
        init_lora_weights="gaussian",  # A ~ N(0, 1/r), B = 0: ΔW = 0 at step 0 (diffusers' LoRA scripts)
        target_modules=list(target_modules),
    )


def require_peft() -> None:
    """peft is the `lora` extra's; without it a one-line error saying how to install it."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():
        raise ValueError("`training_mode`: 'lora' needs the peft library, which is not installed: "
                         "pip install -e '.[lora]' (or pip install peft).")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Before anything is written: do the target modules exist?
# ---------------------------------------------------------------------------------------------------------------------
def matching_modules(model: torch.nn.Module, target: str) -> list[str]:
    """The linear / conv layers of `model` that `target` selects, by peft's rule: a name equal to `target` or ending
    in "." + `target` (so "to_q" selects every attention's to_q, "attn2.to_k" only the cross-attentions')."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
            and (name == target or name.endswith("." + target))]  # fmt: skip


def check_targets(model: torch.nn.Module, targets, key: str, what: str) -> None:
    """A ValueError naming `key` and every target that selects no linear / conv layer of `model` (peft itself
    complains only when none of them matches anything)."""
    unmatched = [t for t in targets if not matching_modules(model, t)]
    if unmatched:
        examples = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                           if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))})  # fmt: skip
        raise ValueError(
            f"`{key}`: {unmatched} match no linear or conv layer of the {what} ({type(model).__name__}); its layers "
            f"end in {', '.join(examples[:24])}{', ...' if len(examples) > 24 else ''}."
        )


def check_lora_config(config) -> None:
    """With `training_mode: lora`, check what the adapters will attach to before any file is written: peft is
    installed, and every `lora_target_modules` entry selects a layer of the base UNet (built from its config.json
    on the meta device: no weights are read). The text encoder's fixed targets are checked the same way."""
    if config.training_mode != "lora":
        return
    require_peft()
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import _from_pretrained_kwargs

    path, subfolder, key = config.pretrained_source("unet")
    unet_config = UNet2DConditionModel.load_config(path, **_from_pretrained_kwargs(config, subfolder))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    check_targets(unet, config.lora_target_modules, "lora_target_modules", f"UNet from {key}={path!r}")
    if config.train_text_encoder_lora:
        path, subfolder, key = config.pretrained_source("text_encoder")
        text_config = CLIPTextConfig.from_pretrained(path, **_from_pretrained_kwargs(config, subfolder))
        with torch.device("meta"):
            text_encoder = CLIPTextModel(text_config)
        check_targets(text_encoder, TEXT_ENCODER_TARGET_MODULES, "train_text_encoder_lora",
                      f"text encoder from {key}={path!r}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Setting the adapters up
# ---------------------------------------------------------------------------------------------------------------------
def add_adapters(config, unet, text_encoder) -> None:
    """Freeze both base models and inject the adapters: into the UNet through diffusers' `add_adapter`, into the text
    encoder (with `train_text_encoder_lora`) through peft's `inject_adapter_in_model`, which makes the same adapter
    as transformers' `add_adapter` (and sets the `peft_config` diffusers reads) without transformers' peft version
    gate (transformers 5.24 asks for peft ≥ 0.22 there, a version PyPI may not have yet)."""
    from peft import inject_adapter_in_model

    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(_lora_config(config, config.lora_target_modules))
    if config.train_text_encoder_lora:
        inject_adapter_in_model(_lora_config(config, TEXT_ENCODER_TARGET_MODULES), text_encoder, adapter_name="default")
    trained = sum(p.numel() for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for p in unet.parameters() if not p.requires_grad)
    logger.info(f"LoRA rank {config.lora_rank}: {trained:,} adapter parameters on a frozen UNet of {total:,} "
                f"({trained / total:.2%})")  # fmt: skip


def cast_adapters(models, dtype: torch.dtype) -> None:
    """The trained (adapter) parameters in `dtype`, float32 under fp16 mixed precision (diffusers'
    `cast_training_params`: the frozen base runs in half precision, the adapters' updates need float32)."""
    from diffusers.training_utils import cast_training_params

    cast_training_params([m for m in models if m is not None], dtype=dtype)


def adapter_layers(unet, text_encoder, with_text_encoder: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' tensors in diffusers' format, {"unet": ..., "text_encoder": ...} (the latter only when trained).

    `convert_state_dict_to_diffusers` renames only the attention projections (`to_q.lora_A` → `to_q.lora.down`) and
    leaves conv layers in PEFT's `lora_A` / `lora_B`. diffusers' loader picks one layout from a component's first
    key, so a file that mixes them (`lora_target_modules` with `conv1`, say) loads only half of its adapters in
    `StableDiffusionPipeline.load_lora_weights`, with a warning. A component whose conversion would mix them keeps
    PEFT's layout throughout, which diffusers loads as is."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from pipelines.lora import layer_and_part

    def one_layout(model):
        peft_state = get_peft_model_state_dict(model)
        converted = convert_state_dict_to_diffusers(peft_state)
        return peft_state if any(layer_and_part(key) is not None for key in converted) else converted

    layers = {"unet": one_layout(unet)}
    if with_text_encoder:
        layers["text_encoder"] = one_layout(text_encoder)
    return layers


def save_adapters(folder: Path, unet, text_encoder, with_text_encoder: bool) -> Path:
    """pytorch_lora_weights.safetensors in `folder` through the pipeline's `save_lora_weights` (diffusers' format:
    `unet.` / `text_encoder.` keys), with each adapter's LoraConfig as metadata, so α ≠ r loads right everywhere."""
    from pipelines import LatentDiffusionPipeline

    layers = adapter_layers(unet, text_encoder, with_text_encoder)
    metadata = {f"{name}_lora_adapter_metadata": module.peft_config["default"].to_dict()
                for name, module in (("unet", unet), ("text_encoder", text_encoder)) if name in layers}  # fmt: skip
    LatentDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
        safe_serialization=True, **metadata,
    )  # fmt: skip
    return readable(Path(folder) / LORA_WEIGHTS)


def readable(path: Path) -> Path:
    """`path` with the mode of every other file a run writes (0666 less the umask): diffusers' `save_lora_weights`
    writes through a private temporary file (0600), which a folder shared on a cluster or served would not show."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def load_adapters(folder: Path, unet, text_encoder, with_text_encoder: bool) -> None:
    """Put the adapters of `folder`'s pytorch_lora_weights.safetensors back into the injected adapters of `unet`
    (and `text_encoder`), as diffusers' scripts do on resume: `lora_state_dict`, then peft's
    `set_peft_model_state_dict`. A file that does not fit is a ValueError naming it (pipelines/lora.py)."""
    from peft.utils import set_peft_model_state_dict

    from pipelines import LatentDiffusionPipeline
    from pipelines.lora import peft_layout

    state_dict, _ = LatentDiffusionPipeline.lora_state_dict(str(folder), weight_name=LORA_WEIGHTS)
    check_lora_state_dict(state_dict, {"unet": unet, "text_encoder": text_encoder}, f"{str(folder)!r}")
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if name == "text_encoder" and not with_text_encoder:
            continue
        part = {k.removeprefix(f"{name}."): v for k, v in state_dict.items() if k.startswith(f"{name}.")}
        result = set_peft_model_state_dict(model, peft_layout(name, part, model), adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{str(folder)!r}: {len(unexpected)} adapter tensors have no place in the {name} "
                             f"(e.g. {unexpected[0]}); the checkpoint is from another run.")  # fmt: skip


def register_checkpoint_hooks(accelerator, unet, text_encoder, with_text_encoder: bool) -> None:
    """accelerate's `save_state` would write every prepared model whole, the frozen base included (a checkpoint the
    size of the UNet for a few kB of adapters). These hooks, diffusers' LoRA scripts' `save_model_hook` /
    `load_model_hook`, write the adapters as pytorch_lora_weights.safetensors instead and read them back; the
    optimizer, LR schedule and RNG states stay accelerate's."""
    targets = [accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)]

    def save_model_hook(models, weights, output_dir):
        for model in models:
            if accelerator.unwrap_model(model) not in targets:
                raise ValueError(f"unexpected model to checkpoint: {type(model).__name__}")
        while weights:  # every rank: accelerate writes nothing of what is popped
            weights.pop()
        if accelerator.is_main_process:
            save_adapters(Path(output_dir), targets[0], targets[1], with_text_encoder)

    def load_model_hook(models, input_dir):
        while models:  # accelerate loads nothing into what is popped
            models.pop()
        load_adapters(Path(input_dir), targets[0], targets[1], with_text_encoder)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


# ---------------------------------------------------------------------------------------------------------------------
# EMA of the adapters
# ---------------------------------------------------------------------------------------------------------------------
class AdapterEMA(EMAModel):
    """diffusers' `EMAModel` over the trainable parameters only (the adapters): every call that takes a model's
    `parameters()` (step, copy_to, store, restore; what training/run.py and training/validation.py call) keeps the
    ones with `requires_grad`, which are the adapters, in the same order as at construction. Saved as safetensors
    (the shadow weights, keyed by parameter name) and a JSON of the decay state, where `EMAModel.save_pretrained`
    would need a model class to rebuild a whole UNet from."""

    def __init__(self, named_parameters, **kwargs):
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        self.names = [n for n, _ in named]
        super().__init__([p for _, p in named], **kwargs)

    @staticmethod
    def _trained(parameters):
        return [p for p in parameters if p.requires_grad]

    def step(self, parameters):
        super().step(self._trained(parameters))

    def copy_to(self, parameters) -> None:
        super().copy_to(self._trained(parameters))

    def store(self, parameters) -> None:
        super().store(self._trained(parameters))

    def restore(self, parameters) -> None:
        super().restore(self._trained(parameters))

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in zip(self.names, self.shadow_params)},
                  str(path / _EMA_WEIGHTS))  # fmt: skip
        state = {k: v for k, v in self.state_dict().items() if k != "shadow_params"}
        (path / _EMA_STATE).write_text(json.dumps({**state, "names": self.names}, indent=1))

    @classmethod
    def from_pretrained(cls, path, model_cls=None, foreach=False) -> AdapterEMA:
        """What `save_pretrained` wrote (`model_cls` is ignored: only the adapters are stored)."""
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / _EMA_STATE).read_text())
        weights = load_file(str(path / _EMA_WEIGHTS))
        names = state.pop("names")
        shadow = [torch.nn.Parameter(weights[n], requires_grad=True) for n in names]
        ema = cls(list(zip(names, shadow)))
        ema.load_state_dict({**state, "shadow_params": [p.detach() for p in shadow]})
        return ema


def make_adapter_ema(config, unet, device):
    """The EMA of the UNet's adapters (with the config's decay and warmup), or None when `use_ema` is off."""
    if not config.use_ema:
        return None
    ema = AdapterEMA(unet.named_parameters(), decay=config.ema_decay, use_ema_warmup=config.ema_warmup,
                     inv_gamma=config.ema_inv_gamma, power=config.ema_power)  # fmt: skip
    ema.to(device)
    return ema


# ---------------------------------------------------------------------------------------------------------------------
# What the card says about it
# ---------------------------------------------------------------------------------------------------------------------
def file_fraction(lora_file: Path, unet_folder: Path | None) -> float | None:
    """The adapter file's size as a fraction of the base UNet's weights file, when both are local."""
    if unet_folder is None or not Path(unet_folder).is_dir():
        return None
    weights = sorted(Path(unet_folder).glob("*.safetensors"))
    return lora_file.stat().st_size / weights[0].stat().st_size if weights else None


_RARE_TOKEN = re.compile(r"\b(sks|ohwx|zwx|[a-z]{3}[0-9]+)\b")


def trigger_words(config) -> list[str]:
    """The words that call the adapter up: `trigger_words` when set, else the DreamBooth `instance_prompt`'s rare
    token (sks, ohwx, ...) or, failing that, the instance prompt itself; [] for captioned data."""
    if config.trigger_words:
        return list(config.trigger_words)
    if config.instance_prompt:
        rare = _RARE_TOKEN.findall(config.instance_prompt)
        return rare or [config.instance_prompt]
    return []


# ---------------------------------------------------------------------------------------------------------------------
# Other layouts (scripts/export_lora.py)
# ---------------------------------------------------------------------------------------------------------------------
FORMATS = ("kohya", "diffusers")


def lora_file(source: str | Path) -> Path:
    """The LoRA file `source` names: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / LORA_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"`source`: {str(source)!r} is neither a .safetensors file nor a folder holding "
                                f"{LORA_WEIGHTS}.")  # fmt: skip
    return path


def _uniform(values: dict, what: str, path: Path):
    distinct = set(values.values())
    if len(distinct) > 1:
        raise ValueError(f"`source`: {str(path)!r} has per-layer {what}s ({sorted(distinct)[:4]}), which the diffusers "
                         "metadata of one LoraConfig cannot hold; convert it with the tool that made it.")
    return distinct.pop() if distinct else None


def convert_lora_file(source: str | Path, fmt: str, out: str | Path, base=None) -> Path:
    """Write the LoRA at `source` (diffusers' or PEFT's layout, as training writes it, or kohya's) to `out` in `fmt`:
    "kohya" (one .safetensors with `lora_unet_...` / `lora_te_...` keys and per-layer `.alpha`, for A1111 / ComfyUI)
    or "diffusers" (a folder with pytorch_lora_weights.safetensors and its LoraConfig metadata). `base`: a pipeline
    whose UNet / text encoder the file must fit (checked first). Everything is checked before `out` is written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pipelines import LatentDiffusionPipeline
    from pipelines.lora import is_kohya, to_kohya

    if fmt not in FORMATS:
        raise ValueError(f"`format`: {fmt!r} is not one of {', '.join(FORMATS)}.")
    path = lora_file(source)
    with safe_open(str(path), "pt") as handle:
        raw = {key: handle.get_tensor(key) for key in handle.keys()}
        header = handle.metadata() or {}
    kohya = is_kohya(raw)
    if kohya == (fmt == "kohya"):
        raise ValueError(f"`source`: {str(path)!r} is already in {'kohya' if kohya else 'diffusers'}'s layout.")
    try:  # diffusers' reader: kohya keys it cannot place are its ValueError ("have not been correctly renamed")
        state_dict, alphas = LatentDiffusionPipeline.lora_state_dict(dict(raw))
    except ValueError as error:
        raise ValueError(f"`source`: {str(path)!r} is not a LoRA file diffusers can read "
                         f"({' '.join(str(error).split())[:300]}).") from error  # fmt: skip
    if base is not None:
        check_lora_state_dict(state_dict, {"unet": base.unet, "text_encoder": base.text_encoder},
                              f"`source`: {str(path)!r}")  # fmt: skip
    out = Path(out).expanduser()
    if fmt == "kohya":
        metadata = json.loads(header.get("lora_adapter_metadata", "{}"))
        for key in ("rank_pattern", "alpha_pattern"):
            if any(metadata.get(f"{name}.{key}") for name in ("unet", "text_encoder")):
                raise ValueError(f"`source`: {str(path)!r} has a per-layer {key}, which this export does not map.")
        converted = to_kohya(state_dict, {name: metadata.get(f"{name}.lora_alpha") for name in ("unet", "text_encoder")})
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(converted, str(out), metadata={"ss_network_module": "networks.lora"})
        return out
    # kohya → diffusers: one α and rank per part, as LoraConfig metadata, so the file loads with its strength.
    from pipelines.lora import layer_and_part, peft_layout

    layers, metadata = {}, {}
    for name in ("unet", "text_encoder"):
        part = {k.removeprefix(f"{name}."): v for k, v in state_dict.items() if k.startswith(f"{name}.")}
        if not part:
            continue
        peft_part = peft_layout(name, part)
        ranks = {k: v.shape[0] for k, v in peft_part.items() if k.endswith("lora_A.weight")}
        alpha = _uniform({k: v for k, v in (alphas or {}).items() if k.startswith(f"{name}.")}, "alpha", path)
        rank = _uniform(ranks, "rank", path)
        layers[f"{name}_lora_layers"] = part
        metadata[f"{name}_lora_adapter_metadata"] = {
            "r": rank, "lora_alpha": alpha if alpha is not None else rank,
            # Full paths, exactly these layers; without kohya's `text_model.` (peft matches by suffix, so they fit
            # transformers' nested CLIPTextModel and its flattened one alike).
            "target_modules": sorted({layer_and_part(k)[0].removeprefix("text_model.") for k in peft_part}),
        }  # fmt: skip
    LatentDiffusionPipeline.save_lora_weights(out, **layers, **metadata)
    return readable(out / LORA_WEIGHTS)
