"""Text-to-image latent diffusion: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", arXiv 2112.10752, sampled with classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598).

The algorithm is diffusers' `StableDiffusionPipeline`'s, step for step, so that for the same components, scheduler
and generator both give the same images (tests/test_pipeline_latent_diffusion.py checks it); what we leave out is
what a model trained by sculpt has no use for (safety checker, IP-Adapter, textual inversion, clip skip).

LoRA adapters come from diffusers' own `StableDiffusionLoraLoaderMixin`, so `load_lora_weights`, `set_adapters`,
`fuse_lora` / `unfuse_lora`, `unload_lora_weights`, several adapters at once and the per-call scale
`cross_attention_kwargs={"scale": s}` work as in `StableDiffusionPipeline`, on files in diffusers', PEFT's or kohya's
layout; `load_lora_weights` first checks that the file fits this UNet and text encoder (pipelines/lora.py).
`StableDiffusionMixin` adds FreeU (`enable_freeu`) and fused QKV projections; VAE slicing and tiling are the VAE's
own switches (`pipe.vae.enable_slicing()`, `pipe.vae.enable_tiling()`), as in diffusers ≥ 0.40.

The scheduler is used as configured. An SD 1.x folder whose scheduler config says `steps_offset: 0` (the old
default) keeps it here, with a warning; `StableDiffusionPipeline` rewrites it to 1 when it is built (a FutureWarning
says so, easily missed). With "leading" timestep spacing the two then sample timesteps one apart (980, 960, …, 0 here;
981, 961, …, 1 there), so the same folder gives slightly different images in the two pipelines. To get diffusers'
images, pass the rewritten scheduler: `pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
steps_offset=1)`. Folders sculpt trains record `steps_offset: 1` (training/config.py), so they are the same in both.

Stages of `__call__`:
    1. check inputs    every user error is a `ValueError` raised here, before any model runs
    2. encode prompt   CLIP last hidden states of the prompt and of the unconditional input "" (or negative prompt)
    3. timesteps       `scheduler.set_timesteps`
    4. latents         z_T ~ N(0, I) · `scheduler.init_noise_sigma`
    5. denoise         one batched UNet call per step over [unconditional, conditional], guidance, `scheduler.step`
    6. decode          z / scaling_factor (+ shift_factor) through the VAE decoder, then `VaeImageProcessor`

The img2img and inpainting pipelines subclass this one and reuse stages 2, 3, 5 and 6.

Saving and loading come from `PortableFolderMixin` (pipelines/portable.py): `save_pretrained` writes a
self-contained folder that loads without sculpt; `from_pretrained` loads weights from safetensors only unless the
caller passes `use_safetensors=False`, and runs no code from the folder.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput, StableDiffusionMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import USE_PEFT_BACKEND, logging, scale_lora_layers, unscale_lora_layers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .latents import decode_latents, vae_scale_factor
from .lora import check_lora_state_dict
from .portable import PortableFolderMixin

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# What `callback_on_step_end(pipe, step, timestep, callback_kwargs)` may ask for in `callback_kwargs`.
CALLBACK_TENSOR_INPUTS = ["latents", "prompt_embeds", "negative_prompt_embeds", "noise_pred", "pred_original_sample"]

StepEndCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, Any]], dict[str, Any]]


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Guidance rescale φ, Lin et al. 2023, arXiv 2305.08891, Sec. 3.4 (Eqs. 15–16).

    A large guidance scale inflates the standard deviation of the guided prediction, which overexposes images
    (worst with zero-terminal-SNR schedules). Rescale it to the std of the conditional prediction, then mix with the
    unrescaled one by φ so that images do not turn plain: x = φ · x_cfg · σ_pos / σ_cfg + (1 - φ) · x_cfg.
    """
    dims = list(range(1, noise_cfg.ndim))  # one std per sample, over channels and pixels
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    noise_rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * noise_rescaled + (1 - guidance_rescale) * noise_cfg


def encode_text(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, texts: list[str], device: torch.device,
    max_length: int | None = None, text_encoder_config: Any = None,
) -> torch.Tensor:
    """CLIP last hidden states of `texts`, padded to `max_length` tokens (the tokenizer's maximum by default), with
    the attention mask when the text encoder's config asks for one (`use_attention_mask`, as diffusers reads it).
    The one text encoding of sculpt: the pipelines' prompts and training's captions both go through it (training
    passes `text_encoder_config`, since a text encoder wrapped for DDP has no `config` of its own)."""
    max_length = max_length or tokenizer.model_max_length
    tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    attention_mask = None
    if getattr(text_encoder_config or text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]


@contextlib.contextmanager
def lora_scaled(model: torch.nn.Module | None, scale: float | None):
    """Inside the block, the LoRA layers of `model` act at `scale` times their strength: diffusers' `scale_lora_layers`
    and `unscale_lora_layers`, which `StableDiffusionPipeline` puts around its text encoder for the per-call LoRA scale
    (the UNet does the same itself with `cross_attention_kwargs["scale"]`)."""
    if scale is None or model is None or not USE_PEFT_BACKEND:
        yield
        return
    scale_lora_layers(model, scale)
    try:
        yield
    finally:
        unscale_lora_layers(model, scale)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LatentDiffusionPipeline(
    PortableFolderMixin, DiffusionPipeline, StableDiffusionMixin, StableDiffusionLoraLoaderMixin
):
    """Text-to-image generation with a latent diffusion model.

    LoRA adapters, FreeU and fused QKV projections work as in `StableDiffusionPipeline` (see the module docstring),
    and so does the scheduler, but for one thing: a config with `steps_offset: 0` is kept, not rewritten to 1.

    Args:
        vae: the autoencoder; images live in its latent space, `2 ** (len(block_out_channels) - 1)` times smaller.
        text_encoder: CLIP text model; its last hidden states condition the UNet through cross-attention.
        tokenizer: the CLIP tokenizer that goes with `text_encoder`.
        unet: the denoiser ε_θ(z_t, t, c) (or v / x_0 predictor, as `scheduler.config.prediction_type` says).
        scheduler: our `DDPMScheduler` by default; any diffusers scheduler works, e.g.
            `DDIMScheduler.from_config(pipe.scheduler.config)`.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = vae_scale_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        config = getattr(scheduler, "config", None)
        if getattr(config, "steps_offset", 1) != 1 and getattr(config, "timestep_spacing", "leading") == "leading":
            # Said, not silently fixed: the folder's scheduler is what its images were made with (module docstring).
            logger.warning(
                f"The scheduler's config has steps_offset={config.steps_offset}; it is kept. StableDiffusionPipeline "
                "rewrites it to 1, so its images of this folder differ slightly; to match them set "
                "`pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, steps_offset=1)`."
            )

    # Read by the denoising loop at every step, so a diffusers `PipelineCallback` that sets `pipe._guidance_scale`
    # (e.g. `SDCFGCutoffCallback`) or `pipe._interrupt` takes effect mid-run, as in diffusers.
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        # guidance_scale is w + 1 in the notation of Ho & Salimans; 1 means the conditional model alone.
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return getattr(self, "_cross_attention_kwargs", None)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @staticmethod
    def callback_tensor_inputs(callback: Any, tensor_inputs: list[str] | None) -> list[str]:
        """diffusers' `PipelineCallback` objects name their own inputs; a plain function gets "latents" by default."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            return list(callback.tensor_inputs)
        return ["latents"] if tensor_inputs is None else list(tensor_inputs)

    def default_height_width(self) -> tuple[int, int]:
        """The training resolution: the UNet's `sample_size` (int or (h, w)) in pixels."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------------------------
    # LoRA
    # ------------------------------------------------------------------------------------------------------------
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' `StableDiffusionLoraLoaderMixin.load_lora_weights` (same arguments: a folder, a file with
        `weight_name`, a Hub id or a state dict; diffusers', PEFT's or kohya's layout), after `check_lora_state_dict`
        has matched every tensor of the file to a layer of this UNet / text encoder. A file made for another model is
        one `ValueError` naming it, the layer and the shapes, and nothing is injected into the pipeline."""
        if not USE_PEFT_BACKEND:  # diffusers' own message says only "PEFT backend is required"
            raise ValueError("`load_lora_weights` needs the peft library, which is not installed: pip install peft "
                             "(with sculpt: pip install -e '.[lora]').")
        argument = "`pretrained_model_name_or_path_or_dict`"
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            source = f"{argument} (a state dict)"
            lookup = dict(pretrained_model_name_or_path_or_dict)  # diffusers' kohya converter pops keys
        else:
            weight_name = kwargs.get("weight_name")
            source = f"{argument}: {str(pretrained_model_name_or_path_or_dict)!r}" + (
                f" (weight_name {weight_name!r})" if weight_name else "")
            lookup = pretrained_model_name_or_path_or_dict
        try:
            state_dict, _ = self.lora_state_dict(lookup, **{k: v for k, v in kwargs.items() if k != "low_cpu_mem_usage"})
        except ValueError as error:  # e.g. kohya keys diffusers cannot rename: "have not been correctly renamed"
            reason = " ".join(str(error).split())
            raise ValueError(f"{source}: not a LoRA file diffusers can read ({reason[:300]}).") from error
        check_lora_state_dict(state_dict, {"unet": self.unet, "text_encoder": self.text_encoder}, source)
        super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, hotswap=hotswap,
                                  **kwargs)  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------------------------
    def _encode_prompt_text(
        self, texts: list[str], device: torch.device, max_length: int | None = None
    ) -> torch.Tensor:
        """CLIP last hidden states of `texts` (`encode_text`), with a warning for each prompt that is truncated."""
        max_length = max_length or self.tokenizer.model_max_length
        # Truncate like diffusers, but say so: CLIP has only `model_max_length` position embeddings.
        for ids in self.tokenizer(texts, truncation=True, max_length=10**6).input_ids:
            if len(ids) > max_length:
                removed = self.tokenizer.decode(ids[max_length - 1 : -1])
                logger.warning(
                    f"The prompt was truncated to {max_length} tokens, the most the text encoder takes; "
                    f"this part was dropped: {removed!r}"
                )
        return encode_text(self.tokenizer, self.text_encoder, texts, device, max_length)

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts into the UNet's cross-attention context; diffusers' argument order.

        The unconditional input is the encoded empty prompt "": exactly what training's caption dropout feeds the
        UNet, so the guidance direction is the one the model learned. `negative_prompt` replaces it.

        Returns:
            `(prompt_embeds, negative_prompt_embeds)`, each `(batch * num_images_per_prompt, seq_len, dim)` with the
            images of one prompt next to each other; `negative_prompt_embeds` is None without guidance unless given.
            Training can call it standalone: `pipe.encode_prompt(captions, do_classifier_free_guidance=False)[0]`
            (no `torch.no_grad` here, so a text encoder being fine-tuned gets gradients; `__call__` has one).
            `lora_scale`: the text encoder's LoRA layers act at this strength (`cross_attention_kwargs["scale"]`).
        """
        if lora_scale is not None:
            self._lora_scale = lora_scale  # where diffusers' LoRA loader reads it (`self.lora_scale`)
        with lora_scaled(self.text_encoder, lora_scale):
            return self._encode_prompts(
                prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds,
                negative_prompt_embeds,
            )  # fmt: skip

    def _encode_prompts(
        self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds,
        negative_prompt_embeds,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self._encode_prompt_text(prompts, device)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        batch_size = prompt_embeds.shape[0]

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch_size
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch_size
            else:
                negatives = list(negative_prompt)
            if len(negatives) != batch_size:
                raise ValueError(
                    f"`negative_prompt`: got {len(negatives)} prompts for a batch of {batch_size}; pass one string, "
                    f"or a list with one negative prompt per prompt."
                )
            # Same length as the prompt's embeddings, so the two stack into one UNet batch.
            negative_prompt_embeds = self._encode_prompt_text(negatives, device, max_length=prompt_embeds.shape[1])

        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def batch_size_of(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
        if isinstance(prompt, str):
            return 1
        return len(prompt) if prompt is not None else prompt_embeds.shape[0]

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        num_inference_steps: int,
        timesteps: list[int] | None,
        guidance_scale: float,
        guidance_rescale: float,
        negative_prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        num_images_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        callback_on_step_end: StepEndCallback | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Raise `ValueError` for every bad argument, naming it, the value and what is accepted."""
        # Prompt: exactly one of the text and its embeddings.
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both; got both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass one of `prompt` (a string or a list of strings) or `prompt_embeds`; got neither.")
        if prompt is not None and not (
            isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))
        ):
            raise ValueError(f"`prompt`: {prompt!r} must be a string or a non-empty list of strings.")
        if prompt_embeds is not None and prompt_embeds.ndim != 3:
            raise ValueError(
                f"`prompt_embeds`: got shape {tuple(prompt_embeds.shape)}; expected (batch, seq_len, dim)."
            )
        batch_size = self.batch_size_of(prompt, prompt_embeds)

        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both; got both.")
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
            raise ValueError(
                f"`negative_prompt`: a list of {len(negative_prompt)} prompts for a batch of {batch_size} prompts; "
                f"pass one string, or a list with one negative prompt per prompt."
            )
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(f"`negative_prompt`: {negative_prompt!r} must be a string or a list of strings.")
        if negative_prompt_embeds is not None:
            expected = tuple(prompt_embeds.shape) if prompt_embeds is not None else None
            if expected is not None and tuple(negative_prompt_embeds.shape) != expected:
                raise ValueError(
                    f"`negative_prompt_embeds`: shape {tuple(negative_prompt_embeds.shape)} must equal the shape of "
                    f"`prompt_embeds`: {expected}."
                )
            if negative_prompt_embeds.ndim != 3 or negative_prompt_embeds.shape[0] != batch_size:
                raise ValueError(
                    f"`negative_prompt_embeds`: shape {tuple(negative_prompt_embeds.shape)} must be "
                    f"({batch_size}, seq_len, dim), one row per prompt."
                )

        # Sizes: the VAE downsamples by `vae_scale_factor`, so the image must tile into whole latent pixels.
        for name, value in (("height", height), ("width", width)):
            if not _is_int(value) or value <= 0 or value % self.vae_scale_factor != 0:
                raise ValueError(
                    f"`{name}`: {value!r} must be a positive multiple of the VAE scale factor {self.vae_scale_factor}."
                )

        # Sampling.
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass either `timesteps` or `sigmas` (a custom schedule), not both; got both.")
        if sigmas is not None:
            if not (isinstance(sigmas, (list, tuple)) and sigmas and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in sigmas)):  # fmt: skip
                raise ValueError(f"`sigmas`: {sigmas!r} must be a non-empty list of numbers.")
            if "sigmas" not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ValueError(
                    f"`sigmas`: {type(self.scheduler).__name__}.set_timesteps takes no custom sigmas; use a "
                    f"scheduler that does (EulerDiscreteScheduler, DPMSolverMultistepScheduler) or pass `timesteps`."
                )
        if timesteps is None and sigmas is None and (not _is_int(num_inference_steps) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps`: {num_inference_steps!r} must be an integer >= 1.")
        num_train_timesteps = getattr(self.scheduler.config, "num_train_timesteps", None)
        if (timesteps is None and sigmas is None and num_train_timesteps is not None
                and num_inference_steps > num_train_timesteps):  # fmt: skip
            raise ValueError(
                f"`num_inference_steps`: {num_inference_steps} cannot be larger than `num_train_timesteps`: "
                f"{num_train_timesteps}."
            )
        if timesteps is not None and "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(
                f"`timesteps`: {type(self.scheduler).__name__}.set_timesteps takes no custom timesteps; "
                f"pass `num_inference_steps` or use a scheduler that does (DDPM, DDIM, Euler, DPM-Solver)."
            )
        if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
            raise ValueError(f"`cross_attention_kwargs`: {cross_attention_kwargs!r} must be a dict, e.g. {{'scale': 0.5}}.")
        scale = (cross_attention_kwargs or {}).get("scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise ValueError(f"`cross_attention_kwargs`: its 'scale' {scale!r} must be a number (the LoRA strength).")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(
                f"`guidance_scale`: {guidance_scale!r} must be >= 0 (values <= 1 turn classifier-free guidance off)."
            )
        if not isinstance(guidance_rescale, (int, float)) or not 0 <= guidance_rescale <= 1:
            raise ValueError(f"`guidance_rescale`: {guidance_rescale!r} must be in [0, 1].")
        if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt`: {num_images_per_prompt!r} must be an integer >= 1.")
        total = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"`generator`: a list of {len(generator)} generators for {total} images ({batch_size} prompts x "
                f"{num_images_per_prompt} per prompt); pass one generator, or one per image."
            )
        if latents is not None:
            expected = (
                total,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            if tuple(latents.shape) != expected:
                raise ValueError(f"`latents`: got shape {tuple(latents.shape)}; expected {expected}.")

        # Outputs and callbacks.
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type`: {output_type!r} must be one of {list(OUTPUT_TYPES)}.")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end`: {callback_on_step_end!r} must be callable.")
        unknown = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs`: {unknown} not allowed; choose from "
                f"{self._callback_tensor_inputs}."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Sampling stages
    # ------------------------------------------------------------------------------------------------------------
    def prepare_timesteps(
        self, num_inference_steps: int, timesteps: list[int] | None, device: torch.device,
        sigmas: list[float] | None = None,
    ) -> torch.Tensor:
        """Set the scheduler's reverse-chain timesteps; custom `timesteps` or `sigmas` (diffusers'
        `retrieve_timesteps`) win over `num_inference_steps`."""
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        elif sigmas is not None:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z_T ~ N(0, I), scaled by `init_noise_sigma` (1 for DDPM/DDIM; σ_max-ish for Euler/Karras schedulers,
        whose z_T = x_0 + σ_T ε is not unit-variance)."""
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict[str, Any]:
        """Pass `eta` (DDIM's η, arXiv 2010.02502 Eq. 16) and `generator` only to a `scheduler.step` that takes
        them: schedulers differ in signature, and diffusers' pipelines filter the same way."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def _pred_original_sample(
        self, step_output: Any, noise_pred: torch.Tensor, sample: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor | None:
        """x̂_0 at this step, for previews. Most schedulers return it from `step`; for those that do not
        (DPM-Solver) invert the forward marginal q(z_t | z_0) (DDPM Eq. 4 → Eq. 15) with the scheduler's ᾱ_t."""
        pred = getattr(step_output, "pred_original_sample", None)
        if pred is not None:
            return pred
        alphas_cumprod = getattr(self.scheduler, "alphas_cumprod", None)
        if alphas_cumprod is None:
            return None
        alpha_prod_t = alphas_cumprod.to(sample.device)[int(t)].to(sample.dtype)  # ᾱ_t
        sample = self.scheduler.scale_model_input(sample, t)
        prediction_type = getattr(self.scheduler.config, "prediction_type", "epsilon")
        if prediction_type == "sample":
            return noise_pred
        if prediction_type == "v_prediction":
            return alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * noise_pred
        return (sample - (1 - alpha_prod_t) ** 0.5 * noise_pred) / alpha_prod_t**0.5

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        extra_step_kwargs: dict[str, Any],
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The reverse chain z_T → z_0 over `timesteps`, with classifier-free guidance.

        Guidance (Ho & Salimans 2022, Eq. 6): ε̃ = ε(z, ∅) + s · (ε(z, c) - ε(z, ∅)), both terms from ONE UNet call
        on the batch [unconditional, conditional]. `after_step(i, latents)` runs after each scheduler step and before
        the user callback (the inpainting pipeline puts the known region back there).
        """
        # As in diffusers, `prompt_embeds` from here on is the UNet's context: [negative, positive] under guidance.
        # Callbacks see (and may replace) that tensor, so diffusers' `PipelineCallback`s work unchanged.
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ())

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                do_cfg = self.do_classifier_free_guidance  # re-read: a callback may turn guidance off

                # 1. Model input: duplicate for the unconditional half; some schedulers rescale z_t (Euler: /√(σ²+1)).
                latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                # 2. Predict the noise (or v / x_0) for both halves at once.
                noise_pred = self.unet(
                    latent_model_input, t, encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False,
                )[0]  # fmt: skip

                # 3. Classifier-free guidance, then the optional guidance rescale (arXiv 2305.08891 Sec. 3.4).
                if do_cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, self.guidance_rescale)

                # 4. z_t → z_{t'}, the scheduler's update (DDPM Algorithm 2 with our default scheduler).
                sample = latents
                step_output = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=True)
                latents = step_output.prev_sample
                if after_step is not None:
                    latents = after_step(i, latents)

                # 5. User callback: may read the tensors it named and replace latents / embeddings.
                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "noise_pred": noise_pred,
                    }
                    callback_kwargs = {k: available[k] for k in tensor_inputs if k in available}
                    if "pred_original_sample" in tensor_inputs:
                        callback_kwargs["pred_original_sample"] = self._pred_original_sample(
                            step_output, noise_pred, sample, t
                        )
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        return latents

    @torch.no_grad()
    def latents_to_images(self, latents: torch.Tensor, output_type: str = "pil") -> Any:
        """Decode latents to images of `output_type` ("pil", "np", "pt"; "latent" returns them unchanged).

        Undoes the training-time normalisation z = (E(x) - shift) · scaling_factor (LDM Sec. 4.3.2: unit-variance
        latents), then the decoder, then `VaeImageProcessor` maps [-1, 1] to [0, 1] / uint8.
        """
        if output_type == "latent":
            return latents
        image = decode_latents(self.vae, latents)
        return self.image_processor.postprocess(image, output_type=output_type)

    # ------------------------------------------------------------------------------------------------------------
    # Text to image
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images from text.

        Args:
            prompt: the text (or one per image batch row); or pass `prompt_embeds` instead.
            negative_prompt: replaces the unconditional "" in guidance; one string or one per prompt.
            height, width: in pixels, multiples of `vae_scale_factor`; default the UNet's training resolution.
            num_inference_steps: reverse-chain steps; ignored when `timesteps` is given.
            timesteps: explicit descending timesteps for schedulers whose `set_timesteps` takes them.
            sigmas: explicit σ schedule for schedulers whose `set_timesteps` takes one (Euler, DPM-Solver).
            guidance_scale: s in ε(∅) + s (ε(c) - ε(∅)); guidance is off for s <= 1 (diffusers' convention).
            guidance_rescale: φ of arXiv 2305.08891 Sec. 3.4, in [0, 1]; 0.7 is the paper's choice.
            num_images_per_prompt: images per prompt; the output keeps the images of a prompt together.
            eta: DDIM's η (0 deterministic, 1 DDPM-like); passed only to schedulers whose `step` takes it.
            generator: one `torch.Generator`, or one per image so each image is reproducible on its own.
            latents: z_T to start from, (batch * num_images_per_prompt, C, height / f, width / f), unscaled.
            prompt_embeds, negative_prompt_embeds: precomputed text encoder outputs (e.g. from `encode_prompt`).
            output_type: "pil", "np" (float in [0, 1], NHWC), "pt" (NCHW in [0, 1]) or "latent".
            return_dict: return an `ImagePipelineOutput` rather than the tuple `(images,)`.
            cross_attention_kwargs: passed to the UNet's attention processors; its "scale" is the LoRA strength for
                this call, in the UNet and the text encoder (0 turns loaded LoRAs off, 1 is their full strength).
            callback_on_step_end: `fn(pipe, step_index, timestep, callback_kwargs) -> dict` after every step; the
                returned dict may replace "latents", "prompt_embeds", "negative_prompt_embeds".
            callback_on_step_end_tensor_inputs: the keys of `callback_kwargs`, from `_callback_tensor_inputs`;
                "pred_original_sample" is the step's x̂_0 latent (decode it with `latents_to_images` for previews).
        """
        callback_on_step_end_tensor_inputs = self.callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        default_height, default_width = self.default_height_width()
        height = default_height if height is None else height
        width = default_width if width is None else width

        # 1. Check inputs: all user errors surface here, before any model runs.
        self.check_inputs(
            prompt, height, width, num_inference_steps, timesteps, guidance_scale, guidance_rescale,
            negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt, generator, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs, latents=latents, sigmas=sigmas,
            cross_attention_kwargs=cross_attention_kwargs,
        )  # fmt: skip
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = self.batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        device = self._execution_device

        # 2. Encode the prompt and the unconditional input (the text encoder's LoRA at this call's scale).
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=(cross_attention_kwargs or {}).get("scale"),
        )  # fmt: skip

        # 3. Timesteps of the reverse chain.
        timesteps = self.prepare_timesteps(num_inference_steps, timesteps, device, sigmas)

        # 4. z_T ~ N(0, I) (times the scheduler's initial sigma).
        latents = self.prepare_latents(
            batch_size, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )

        # 5. Denoise.
        latents = self.denoise(
            latents, timesteps, prompt_embeds, negative_prompt_embeds, self.prepare_extra_step_kwargs(generator, eta),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip

        # 6. Decode.
        images = self.latents_to_images(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
