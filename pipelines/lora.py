"""LoRA files for the latent diffusion pipelines: the check that a file fits the model before diffusers' loader touches
it, and the kohya layout (A1111, ComfyUI, kohya sd-scripts) beside diffusers' own.

LoRA (Hu et al. 2021, arXiv 2106.09685) adds ΔW = (α / r) · B A to a frozen linear (or conv) layer W, A of shape
(r, in), B of shape (out, r). The pipelines load files through diffusers' `StableDiffusionLoraLoaderMixin`, which
reads every format diffusers knows (its own `unet.*` / `text_encoder.*` keys, PEFT's `lora_A` / `lora_B`, kohya's
`lora_unet_*` / `lora_te_*`) and converts them with diffusers' converters; `check_lora_state_dict` runs on that
converted dict, so the rule "which layer does this tensor belong to" is diffusers', not a second copy here.

Why a check of our own: given a file made for another model, diffusers' loader either injects adapters into the
layers that do exist and then fails on the first shape mismatch (leaving the pipeline half-modified), or logs a
warning and loads nothing. Here every tensor is matched to a layer of this UNet / text encoder and its shape to
that layer's before anything is injected, and a mismatch is one `ValueError` naming the file, the layer and both
shapes.

This file ships inside saved folders (inlined into the pipeline file, see pipelines/portable.py): it imports only
torch, safetensors and diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)

# The modules of a diffusers SD pipeline that LoRA files address, by their key prefix.
LORA_COMPONENTS = ("unet", "text_encoder")
# kohya's key prefixes for them (sd-scripts' LORA_PREFIX_UNET / LORA_PREFIX_TEXT_ENCODER for SD 1.x/2.x).
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def layer_and_part(key: str) -> tuple[str, str] | None:
    """"down_blocks.0.attn1.to_q.lora_A.weight" → ("down_blocks.0.attn1.to_q", "lora_A.weight"), for the PEFT-format
    keys diffusers' converters produce; None for a key that is not a LoRA tensor."""
    for marker in (".lora_A.", ".lora_B.", ".lora_magnitude_vector"):
        if marker in key:
            layer, _, rest = key.partition(marker)
            return layer, marker.strip(".") + ("." + rest if rest else "")
    return None


def peft_layout(name: str, part: dict[str, torch.Tensor], component=None) -> dict[str, torch.Tensor]:
    """One component's LoRA tensors (keys without the `unet.` / `text_encoder.` prefix) in PEFT's layout, converted
    as diffusers' loader converts them: `convert_unet_state_dict_to_peft` for the UNet (unless already PEFT's),
    `convert_state_dict_to_diffusers` then `convert_state_dict_to_peft` for the text encoder, whose `text_model.`
    prefix goes when `component` is a flattened (transformers ≥ 5) CLIPTextModel."""
    if name == "unet":
        return part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if component is not None and not hasattr(component, "text_model"):
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    return part


def _layer_sizes(module: torch.nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of a linear or conv layer, looking through an adapter already injected (`base_layer`)."""
    base = getattr(module, "base_layer", module)
    if isinstance(base, torch.nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, torch.nn.Conv2d):
        return base.in_channels, base.out_channels
    return None


def check_lora_state_dict(state_dict: dict[str, torch.Tensor], components: dict[str, Any], source: str) -> None:
    """Raise a ValueError naming `source` unless every tensor of the (diffusers-converted) LoRA `state_dict` belongs
    to a linear or conv layer of one of `components` ({"unet": ..., "text_encoder": ...}) and has that layer's
    shape: A is (rank, inputs[, kh, kw]), B is (outputs, rank[, 1, 1]), rank ≥ 1 and the same in both."""
    if not state_dict:
        raise ValueError(f"{source}: holds no LoRA weights.")
    foreign = sorted({key.split(".")[0] for key in state_dict if key.split(".")[0] not in LORA_COMPONENTS})
    if foreign:
        raise ValueError(
            f"{source}: has LoRA weights for {', '.join(repr(f) for f in foreign)}, which this pipeline does not "
            f"have (it has {', '.join(LORA_COMPONENTS)}): the file was made for another kind of model."
        )
    for name in LORA_COMPONENTS:
        prefix = f"{name}."
        part = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        if not part:
            continue
        component = components.get(name)
        if component is None:
            raise ValueError(f"{source}: has LoRA weights for the {name}, and this pipeline has no {name}.")
        if any(".lokr_" in key for key in part):  # LoKr: another adapter layout, left to diffusers' own checks
            continue
        peft_keys = [key for key in part if layer_and_part(key) is not None]
        if peft_keys and len(peft_keys) < len(part):
            other = next(key for key in part if layer_and_part(key) is None)
            raise ValueError(
                f"{source}: mixes two layouts in its {name} weights, PEFT's ({name}.{peft_keys[0]}) and diffusers' "
                f"older one ({name}.{other}). diffusers' loader reads a component in one layout, chosen by its first "
                f"key, and drops the other half's layers; rewrite the file in one layout (all lora_A / lora_B)."
            )
        _check_component(peft_layout(name, part, component), component, name, source)


def _check_component(part: dict[str, torch.Tensor], component, name: str, source: str) -> None:
    modules = dict(component.named_modules())
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in part.items():
        found = layer_and_part(key)
        if found is None:
            raise ValueError(f"{source}: the key {name}.{key} is not a LoRA weight (lora_A / lora_B / lora.down / "
                             f"lora.up); the file is not a LoRA, or is one in a format diffusers cannot read.")
        layers.setdefault(found[0], {})[found[1]] = tensor
    missing = sorted(layer for layer in layers if layer not in modules or _layer_sizes(modules[layer]) is None)
    if missing:
        raise ValueError(
            f"{source}: has LoRA weights for {len(missing)} of its {len(layers)} {name} layers that this {name} "
            f"({type(component).__name__}) does not have, e.g. {missing[0]!r}: the file was made for another model."
        )
    for layer, tensors in sorted(layers.items()):
        inputs, outputs = _layer_sizes(modules[layer])
        down, up = tensors.get("lora_A.weight"), tensors.get("lora_B.weight")
        if down is None or up is None:
            raise ValueError(f"{source}: the {name} layer {layer!r} has only one of its two LoRA matrices "
                             f"({', '.join(sorted(tensors))}); the file is incomplete.")
        rank = down.shape[0]
        if rank < 1 or down.ndim < 2 or down.shape[1] != inputs or up.shape[0] != outputs or up.shape[1] != rank:
            raise ValueError(
                f"{source}: the {name} layer {layer!r} maps {inputs} → {outputs} features here, but the file's LoRA "
                f"matrices are A {tuple(down.shape)} and B {tuple(up.shape)} (expected A (rank, {inputs}) and B "
                f"({outputs}, rank), rank ≥ 1): the file was made for another model."
            )


# ---------------------------------------------------------------------------------------------------------------------
# The kohya layout
# ---------------------------------------------------------------------------------------------------------------------
def is_kohya(state_dict: dict[str, Any]) -> bool:
    """Whether every key is a kohya one (`lora_unet_...`, `lora_te_...`), the test diffusers' loader applies."""
    return bool(state_dict) and all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in state_dict)


def to_kohya(state_dict: dict[str, torch.Tensor], alphas: dict[str, float], text_encoder=None) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict (`unet.` / `text_encoder.` keys, as `save_lora_weights` writes) in kohya's
    layout: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and `lora_te_text_model_
    ...` for the text encoder (the names sd-scripts writes for SD 1.x, which A1111 and ComfyUI map onto their own).
    `alphas`: {"unet": α, "text_encoder": α} from the file's metadata; kohya stores α per layer, and diffusers'
    `convert_state_dict_to_kohya` would write α = rank there, which changes the LoRA's strength whenever α ≠ r."""
    converted = {}
    for name, prefix in KOHYA_PREFIXES.items():
        part = {k.removeprefix(f"{name}."): v for k, v in state_dict.items() if k.startswith(f"{name}.")}
        if not part:
            continue
        for key, tensor in peft_layout(name, part).items():
            layer, kind = layer_and_part(key)
            if name == "text_encoder" and not layer.startswith("text_model."):
                layer = "text_model." + layer  # the name sd-scripts and A1111 use (transformers < 5 nesting)
            stem = prefix + layer.replace(".", "_")
            if kind == "lora_A.weight":
                converted[f"{stem}.lora_down.weight"] = tensor.contiguous()
                alpha = alphas.get(name)
                converted[f"{stem}.alpha"] = torch.tensor(float(alpha if alpha is not None else tensor.shape[0]))
            elif kind == "lora_B.weight":
                converted[f"{stem}.lora_up.weight"] = tensor.contiguous()
            else:
                raise ValueError(f"`{name}.{key}`: kohya's layout has no place for {kind} (DoRA / bias LoRAs).")
    return converted
