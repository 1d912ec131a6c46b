"""The latent diffusion pipelines against diffusers' Stable Diffusion pipelines (same algorithm, same numbers),
against their own invariants (inpainting keeps the known region), and their argument checks."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_components
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.callbacks import SDCFGCutoffCallback
from diffusers.utils.torch_utils import randn_tensor

from pipelines import (
    DDPMScheduler,
    LatentDiffusionImg2ImgPipeline,
    LatentDiffusionInpaintPipeline,
    LatentDiffusionPipeline,
)
from training.builtin.shapes import make_shapes_sample

PROMPT = "a small red circle on a white background"
SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


@pytest.fixture(scope="module")
def tiny() -> dict:
    """One set of tiny components for the module; models are in eval mode and only run under no_grad."""
    return make_components()


def parts(tiny: dict, scheduler: str = "ddpm") -> dict:
    """The shared models with a fresh scheduler of the given kind, built from our DDPM config by `from_config`."""
    return {**tiny, "scheduler": SCHEDULERS[scheduler].from_config(tiny["scheduler"].config)}


def ours(cls, components: dict):
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stable_diffusion(cls, components: dict):
    pipe = cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gradient_image() -> PIL.Image.Image:
    """A smooth 32x32 RGB gradient (PIL, as users pass images)."""
    yy, xx = np.mgrid[0:32, 0:32] / 31
    pixels = np.stack([xx, yy, 0.25 + 0.5 * xx * yy], axis=-1)
    return PIL.Image.fromarray((pixels * 255).round().astype(np.uint8))


def right_half_mask() -> PIL.Image.Image:
    """White (repaint) right half, black (keep) left half; edges on the 2-pixel latent grid."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255
    return PIL.Image.fromarray(mask)


def call_both(ours_pipe, sd_pipe, make_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Run both with identical, freshly seeded arguments (generators are consumed by a run)."""
    return ours_pipe(**make_kwargs()).images, sd_pipe(**make_kwargs()).images


# ---------------------------------------------------------------------------------------------------------------------
# Text to image: the same images as StableDiffusionPipeline
# ---------------------------------------------------------------------------------------------------------------------
TEXT2IMG_CASES = {
    "guidance": ("ddpm", {}),
    "no_guidance": ("ddpm", {"guidance_scale": 1.0}),
    "negative_prompt": ("ddpm", {"negative_prompt": "a large blue square"}),
    "two_per_prompt": ("ddpm", {"num_images_per_prompt": 2}),
    "prompt_list_generator_list": ("ddpm", {"prompt": [PROMPT, "a green triangle"], "generator": [1, 2]}),
    "guidance_rescale": ("ddpm", {"guidance_rescale": 0.7, "guidance_scale": 9.0}),
    "custom_timesteps": ("ddpm", {"timesteps": [901, 501, 101, 1]}),
    "ddim_eta": ("ddim", {"eta": 1.0}),
    "ddim_latents": ("ddim", {"latents": "randn"}),
    "euler": ("euler", {}),
    "dpm_solver": ("dpm", {"num_images_per_prompt": 2}),
    "cfg_cutoff_callback": ("ddpm", {"callback_on_step_end": "cfg_cutoff"}),  # diffusers' own PipelineCallback
}


@pytest.mark.parametrize("case", list(TEXT2IMG_CASES))
def test_text2img_matches_stable_diffusion(tiny, case):
    scheduler, extra = TEXT2IMG_CASES[case]
    components = parts(tiny, scheduler)
    pipe, sd = ours(LatentDiffusionPipeline, components), stable_diffusion(StableDiffusionPipeline, components)

    def make_kwargs():
        kwargs = {"prompt": PROMPT, "num_inference_steps": 3, "generator": gen(0), "output_type": "np", **extra}
        if isinstance(kwargs["generator"], list):
            kwargs["generator"] = [gen(seed) for seed in kwargs["generator"]]
        if kwargs.get("latents") == "randn":
            kwargs["latents"] = torch.randn((1, 4, 16, 16), generator=gen(7))
        if "timesteps" in kwargs:
            kwargs.pop("num_inference_steps")
        if kwargs.get("callback_on_step_end") == "cfg_cutoff":  # guidance off after the first step
            kwargs["callback_on_step_end"] = SDCFGCutoffCallback(cutoff_step_ratio=0.4)
        return kwargs

    images, expected = call_both(pipe, sd, make_kwargs)
    assert images.shape == expected.shape
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_text2img_prompt_embeds_match_prompt(tiny):
    """`encode_prompt` output fed back as embeddings reproduces the prompt run exactly (training reuses it)."""
    pipe = ours(LatentDiffusionPipeline, parts(tiny))
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(PROMPT, negative_prompt="a blue square")
    assert prompt_embeds.shape == negative_prompt_embeds.shape == (1, 77, 32)
    kwargs = {"num_inference_steps": 2, "output_type": "np"}
    from_text = pipe(PROMPT, negative_prompt="a blue square", generator=gen(0), **kwargs).images
    from_embeds = pipe(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, generator=gen(0), **kwargs
    ).images
    np.testing.assert_array_equal(from_text, from_embeds)


def test_unconditional_input_is_the_empty_prompt(tiny):
    """The unconditional half is exactly the encoding of "" — what caption dropout trains the model on."""
    pipe = ours(LatentDiffusionPipeline, parts(tiny))
    _, negative = pipe.encode_prompt(["a red circle", "a blue square"], num_images_per_prompt=2)
    empty, _ = pipe.encode_prompt("", do_classifier_free_guidance=False)
    assert negative.shape == (4, 77, 32)
    for row in negative:
        torch.testing.assert_close(row, empty[0], atol=0, rtol=0)


def test_recorded_output_slice(tiny):
    """Values recorded once from this implementation after it matched StableDiffusionPipeline exactly.

    Prompt and unconditional input go in as fixed token ids, so the numbers depend on the models' seeded weights
    only, not on the ids conftest's freshly trained tokenizer assigns to words and special tokens.
    """
    components = parts(tiny)
    pipe, sd = ours(LatentDiffusionPipeline, components), stable_diffusion(StableDiffusionPipeline, components)
    with torch.no_grad():
        prompt_embeds = tiny["text_encoder"](torch.tensor([[0, 300, 310, 320, 330] + [1] * 72]))[0]
        negative_prompt_embeds = tiny["text_encoder"](torch.tensor([[0] + [1] * 76]))[0]
    kwargs = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
    kwargs.update(num_inference_steps=3, output_type="np")
    image = pipe(**kwargs, generator=gen(0)).images
    assert image.shape == (1, 32, 32, 3)
    expected = np.array([[0.4355, 0.5070, 0.5075], [0.5184, 0.6007, 0.6070], [0.4594, 0.4612, 0.5004]])
    np.testing.assert_allclose(image[0, -3:, -3:, -1], expected, atol=1e-4)
    np.testing.assert_array_equal(image, sd(**kwargs, generator=gen(0)).images)


def test_output_types(tiny):
    pipe = ours(LatentDiffusionPipeline, parts(tiny))
    kwargs = {"prompt": PROMPT, "num_inference_steps": 1, "num_images_per_prompt": 2}
    pil = pipe(**kwargs, output_type="pil").images
    assert len(pil) == 2 and all(isinstance(i, PIL.Image.Image) and i.size == (32, 32) for i in pil)
    assert pipe(**kwargs, output_type="np").images.shape == (2, 32, 32, 3)
    pt = pipe(**kwargs, output_type="pt").images
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert pipe(**kwargs, output_type="latent").images.shape == (2, 4, 16, 16)
    (images,) = pipe(**kwargs, output_type="np", return_dict=False)
    assert images.shape == (2, 32, 32, 3)
    assert pipe(**kwargs, height=16, width=24, output_type="np").images.shape == (2, 16, 24, 3)


def test_decode_applies_scaling_and_shift(tiny):
    """Decoding undoes z = (E(x) - shift) · scaling; `shift_factor` is diffusers' AutoencoderKL config key."""
    components = {**parts(tiny), "vae": copy.deepcopy(tiny["vae"])}  # a private VAE: its config is modified
    components["vae"].register_to_config(shift_factor=0.25)
    pipe = ours(LatentDiffusionPipeline, components)
    latents = pipe(PROMPT, num_inference_steps=2, generator=gen(0), output_type="latent").images
    images = pipe(PROMPT, num_inference_steps=2, generator=gen(0), output_type="pt").images
    vae = components["vae"]
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor + 0.25).sample
    torch.testing.assert_close(images, (expected / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddpm", "dpm"])  # DPM-Solver's step returns no x̂_0: the fallback computes it
def test_callback_sees_tensors_and_final_prediction(tiny, scheduler):
    pipe = ours(LatentDiffusionPipeline, parts(tiny, scheduler))
    seen = []

    def callback(pipeline, step, timestep, kwargs):
        seen.append({k: v.clone() for k, v in kwargs.items()})
        return {}

    inputs = ["latents", "prompt_embeds", "noise_pred", "pred_original_sample"]
    latents = pipe(
        PROMPT, num_inference_steps=3, generator=gen(0), output_type="latent",
        callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs,
    ).images  # fmt: skip
    assert len(seen) == 3 and set(seen[0]) == set(inputs)
    assert seen[0]["prompt_embeds"].shape == (2, 77, 32)  # [unconditional, conditional], as in diffusers
    assert seen[0]["noise_pred"].shape == seen[0]["pred_original_sample"].shape == (1, 4, 16, 16)
    # The last step lands on t = 0, where the sample is the model's x̂_0 (up to DDPM's σ ≈ 1e-10 noise).
    torch.testing.assert_close(seen[-1]["pred_original_sample"], latents, atol=1e-5, rtol=0)


def test_callback_can_replace_latents(tiny):
    pipe = ours(LatentDiffusionPipeline, parts(tiny, "ddim"))

    def zero_latents(pipeline, step, timestep, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, "generator": gen(0), "output_type": "latent"}
    latents = pipe(**kwargs, callback_on_step_end=zero_latents).images
    assert torch.count_nonzero(latents) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Img2img: the same images as StableDiffusionImg2ImgPipeline
# ---------------------------------------------------------------------------------------------------------------------
IMG2IMG_CASES = {
    "ddpm": ("ddpm", {}),
    "strength_1": ("ddpm", {"strength": 1.0}),
    "no_guidance": ("ddpm", {"guidance_scale": 1.0}),
    "two_per_prompt": ("ddpm", {"num_images_per_prompt": 2}),
    "generator_list": ("ddpm", {"num_images_per_prompt": 2, "generator": [3, 4]}),
    "ddim_eta": ("ddim", {"eta": 1.0}),
    "euler": ("euler", {}),  # needs set_begin_index for the shortened schedule
    "dpm_solver": ("dpm", {}),
}


@pytest.mark.parametrize("case", list(IMG2IMG_CASES))
def test_img2img_matches_stable_diffusion(tiny, case):
    scheduler, extra = IMG2IMG_CASES[case]
    components = parts(tiny, scheduler)
    pipe = ours(LatentDiffusionImg2ImgPipeline, components)
    sd = stable_diffusion(StableDiffusionImg2ImgPipeline, components)

    def make_kwargs():
        kwargs = {"prompt": PROMPT, "image": gradient_image(), "strength": 0.6, "num_inference_steps": 5}
        kwargs.update({"generator": gen(0), "output_type": "np", **extra})
        if isinstance(kwargs["generator"], list):
            kwargs["generator"] = [gen(seed) for seed in kwargs["generator"]]
        return kwargs

    images, expected = call_both(pipe, sd, make_kwargs)
    assert images.shape == expected.shape
    # Not bit-exact with 2 images: diffusers' torch.cat of the VAE's (channels-last strided) latents and our
    # repeat_interleave give the UNet differently laid out memory, which changes float summation order (~1e-6).
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_img2img_accepts_pil_numpy_and_tensor_alike(tiny):
    pipe = ours(LatentDiffusionImg2ImgPipeline, parts(tiny))
    pixels = np.asarray(gradient_image()).astype(np.float32) / 255  # HWC in [0, 1]
    tensor = torch.from_numpy(pixels).permute(2, 0, 1) * 2 - 1  # CHW in [-1, 1]
    results = [
        pipe(PROMPT, image=image, strength=0.5, num_inference_steps=4, generator=gen(0), output_type="np").images
        for image in (gradient_image(), pixels, tensor)
    ]
    # Not bit-equal: the processor's same-size resize of arrays and tensors is an interpolation (~3e-6).
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    np.testing.assert_allclose(results[2], results[0], atol=1e-5)


def test_img2img_strength_controls_how_much_changes(tiny):
    """Measured in latent space: the random tiny VAE's reconstruction error would swamp the change in pixels."""
    pipe = ours(LatentDiffusionImg2ImgPipeline, parts(tiny))
    with torch.no_grad():  # the pipeline's first draw from gen(0) is this posterior sample
        original = pipe.encode_image(pipe.preprocess_image(gradient_image(), 32, 32), 1, gen(0))
    distances = {}
    for strength in (0.2, 0.6, 1.0):
        kwargs = {"image": gradient_image(), "strength": strength, "num_inference_steps": 5, "output_type": "latent"}
        latents = pipe(PROMPT, **kwargs, generator=gen(0)).images
        distances[strength] = (latents - original).abs().mean().item()
    assert distances[0.2] < distances[0.6] < distances[1.0], distances


# ---------------------------------------------------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------------------------------------------------
class _DiffusersRandomOrder(LatentDiffusionInpaintPipeline):
    """Draw the random numbers diffusers' inpaint pipeline draws and discards (it VAE-encodes the masked image, which
    a 4-channel UNet never uses, after sampling the noise), so a stochastic scheduler's step noise lines up."""

    def prepare_extra_step_kwargs(self, generator, eta):
        randn_tensor((1, 4, 16, 16), generator=generator)
        return super().prepare_extra_step_kwargs(generator, eta)


INPAINT_CASES = {
    "ddim": ("ddim", {}, LatentDiffusionInpaintPipeline),
    "ddim_strength": ("ddim", {"strength": 0.6}, LatentDiffusionInpaintPipeline),
    "euler_two_per_prompt": ("euler", {"num_images_per_prompt": 2}, LatentDiffusionInpaintPipeline),
    "ddpm": ("ddpm", {}, _DiffusersRandomOrder),
    "ddpm_strength": ("ddpm", {"strength": 0.6}, _DiffusersRandomOrder),
}


@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_inpaint_matches_stable_diffusion_with_a_text2img_unet(tiny, case):
    """diffusers' inpaint pipeline replaces the known region the same way when the UNet has 4 input channels."""
    scheduler, extra, cls = INPAINT_CASES[case]
    components = parts(tiny, scheduler)
    pipe, sd = ours(cls, components), stable_diffusion(StableDiffusionInpaintPipeline, components)

    def make_kwargs():
        kwargs = {"prompt": PROMPT, "image": gradient_image(), "mask_image": right_half_mask()}
        return {**kwargs, "num_inference_steps": 4, "generator": gen(0), "output_type": "np", **extra}

    images, expected = call_both(pipe, sd, make_kwargs)
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_inpaint_keeps_the_known_region(tiny):
    components = parts(tiny)
    pipe = ours(LatentDiffusionInpaintPipeline, components)
    kwargs = {"prompt": PROMPT, "image": gradient_image(), "mask_image": right_half_mask(), "num_inference_steps": 3}

    # Latent space, exactly: the known half is the encoded original, the repainted half is new.
    latents = pipe(**kwargs, generator=gen(0), output_type="latent").images
    vae = components["vae"]
    image = pipe.image_processor.preprocess(gradient_image())
    with torch.no_grad():
        posterior_sample = vae.encode(image).latent_dist.sample(gen(0))  # the pipeline's first draw from gen(0)
        reconstruction = (vae.decode(posterior_sample).sample / 2 + 0.5).clamp(0, 1)
    original_latents = posterior_sample * vae.config.scaling_factor
    torch.testing.assert_close(latents[..., :8], original_latents[..., :8], atol=1e-6, rtol=1e-6)
    assert (latents[..., 8:] - original_latents[..., 8:]).abs().mean() > 0.5

    # Pixels, against the VAE's own reconstruction of the input. Not near-exact with a random tiny VAE: its decoder's
    # GroupNorm statistics (and mid-block attention) span the whole image, so the repainted half moves the kept half
    # too (a decoder without the attention moves it as much; trained VAEs are far more local). Measured mean |Δ|:
    # kept 0.106, repainted 0.205 at seed 0; kept 0.10-0.13, repainted 0.19-0.20 over seeds 0-5. Bounds with margin:
    images = pipe(**kwargs, generator=gen(0), output_type="pt").images
    difference = (images - reconstruction).abs()
    kept, repainted = difference[..., :16].mean().item(), difference[..., 16:].mean().item()
    assert kept < 0.15, kept
    assert repainted > 0.17, repainted


def block_mean_autoencoder() -> AutoencoderKL:
    """A real two-block AutoencoderKL whose weights are set by hand so that it encodes each 2x2 pixel block to its
    mean colour (latent channels 0-2; channel 3 is 0; log-variance -30, so a posterior sample is the mean) and
    decodes by repeating that colour over the block: a local autoencoder that reconstructs well, the ideal a trained
    VAE approaches. (Training the tiny VAE of make_components instead was measured: 400 steps on 64 shapes images
    took ~25 s and left an L1 error of 0.04-0.09, and its decoder, whose receptive field and GroupNorm statistics
    span the whole 32 px image, moved the kept half by 0.10-0.30 when the other half changed.)

    Every residual branch is off (all weights start at zero, so each ResnetBlock2D passes its input on through its
    shortcut) and the mid-block has no attention. What is left is linear and local except each output GroupNorm,
    which normalises by statistics of the whole image. The 1x1 shortcut before it builds every group of channels as
    [s, -s, K, -K] with K = 10⁴ from its bias: the group mean is then exactly 0 at every pixel and the variance is
    (K² + mean s²) / (group size / 2) ≈ K² / (group size / 2) whatever the image (the random UNet's latents in the
    repainted half reach |s| ≈ 80, which moves it by < 10⁻⁴), so the norm's weight undoes it. A +20 norm bias keeps
    SiLU in its linear range (SiLU(s + 20) = s + 20 to 1e-7); the output conv takes it off again.
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=False,
    )
    big, offset = 1e4, 20.0
    encoder, decoder = vae.encoder, vae.decoder

    def signal_and_constant_pairs(shortcut: torch.nn.Conv2d, norm: torch.nn.GroupNorm) -> int:
        """Channel c of the shortcut's input becomes [s, -s, K, -K] at the start of group c of `norm`; returns the
        group size (the stride between the colour channels)."""
        size = norm.num_channels // norm.num_groups
        for group in range(norm.num_groups):
            first = group * size
            if group < 3:  # the three colour channels; the fourth group carries only the constants
                shortcut.weight[first, group] = 1
                shortcut.weight[first + 1, group] = -1
                norm.weight[first] = big / math.sqrt(size / 2)
                norm.bias[first] = offset
            shortcut.bias[first + 2] = big
            shortcut.bias[first + 3] = -big
        return size

    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        # Encoder: RGB → (2x2 block mean, via the stride-2 conv on the bottom/right-padded input) → the norm → latent.
        for c in range(3):
            encoder.conv_in.weight[c, c, 1, 1] = 1
            encoder.down_blocks[0].downsamplers[0].conv.weight[c, c, :2, :2] = 0.25
        stride = signal_and_constant_pairs(encoder.down_blocks[1].resnets[0].conv_shortcut, encoder.conv_norm_out)
        for c in range(3):
            encoder.conv_out.weight[c, stride * c, 1, 1] = 1
            encoder.conv_out.bias[c] = -offset
        encoder.conv_out.bias[4:] = -30.0  # log-variance
        vae.quant_conv.weight[:, :, 0, 0] = torch.eye(8)
        vae.post_quant_conv.weight[:, :, 0, 0] = torch.eye(4)
        # Decoder: latent → nearest-neighbour upsampling (the upsampler's conv is the identity) → the norm → RGB.
        for c in range(3):
            decoder.conv_in.weight[c, c, 1, 1] = 1
            decoder.up_blocks[0].upsamplers[0].conv.weight[c, c, 1, 1] = 1
        stride = signal_and_constant_pairs(decoder.up_blocks[1].resnets[0].conv_shortcut, decoder.conv_norm_out)
        for c in range(3):
            decoder.conv_out.weight[c, stride * c, 1, 1] = 1
            decoder.conv_out.bias[c] = -offset
    return vae.eval()


def test_inpaint_keeps_the_input_image_outside_the_mask(tiny):
    """Against the INPUT pixels, not the VAE's reconstruction: with an autoencoder that is local and reconstructs
    well, what lies outside the mask comes out as it went in, and what lies inside is repainted."""
    vae = block_mean_autoencoder()
    pipe = ours(LatentDiffusionInpaintPipeline, {**parts(tiny), "vae": vae})
    for index in range(4):
        image = make_shapes_sample(index, 32, seed=0)[0]
        pixels = np.asarray(image).astype(np.float32) / 255
        output = pipe(PROMPT, image=image, mask_image=right_half_mask(), num_inference_steps=3, generator=gen(index),
                      output_type="np").images[0]  # fmt: skip
        error = np.abs(output - pixels).mean(axis=-1)
        kept, repainted = error[:, :16].mean(), error[:, 16:].mean()
        # The autoencoder's own round trip, which errs only where a shape's edge splits a 2x2 block.
        with torch.no_grad():
            x = pipe.image_processor.preprocess(image)
            round_trip = pipe.image_processor.postprocess(vae.decode(vae.encode(x).latent_dist.mode()).sample, "np")[0]
        own = np.abs(round_trip - pixels).mean(axis=-1)
        assert own.mean() < 0.02, own.mean()  # reconstructs well: measured 0, 0.012, 0.010, 0.009 on these 4
        # Measured mean |out - input| outside the mask 0, 0.0060, 0.0086, 0.0093 (the autoencoder's own error there,
        # to 1e-5: the pipeline adds nothing); inside 0.43, 0.51, 0.54, 0.48.
        assert kept < 0.03, (index, kept)
        assert abs(kept - own[:, :16].mean()) < 1e-3, (index, kept, own[:, :16].mean())
        assert repainted > 0.3 and repainted > 10 * kept, (index, kept, repainted)


def test_inpaint_mask_as_tensor_equals_mask_as_pil(tiny):
    pipe = ours(LatentDiffusionInpaintPipeline, parts(tiny, "ddim"))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 16:] = 1
    kwargs = {"prompt": PROMPT, "image": gradient_image(), "num_inference_steps": 2, "output_type": "np"}
    from_pil = pipe(**kwargs, mask_image=right_half_mask(), generator=gen(0)).images
    from_tensor = pipe(**kwargs, mask_image=mask, generator=gen(0)).images
    np.testing.assert_array_equal(from_pil, from_tensor)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tiny, tmp_path):
    pipe = ours(LatentDiffusionPipeline, parts(tiny))
    pipe.save_pretrained(tmp_path)
    for folder in ("unet", "vae"):
        assert (tmp_path / folder / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "text_encoder" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin"))

    loaded = ours(LatentDiffusionPipeline, LatentDiffusionPipeline.from_pretrained(tmp_path).components)
    assert type(loaded.scheduler) is DDPMScheduler
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, "output_type": "np"}
    np.testing.assert_array_equal(pipe(**kwargs, generator=gen(0)).images, loaded(**kwargs, generator=gen(0)).images)

    # The same folder loads as the img2img / inpaint pipelines.
    inpaint = LatentDiffusionInpaintPipeline.from_pretrained(tmp_path)
    assert isinstance(inpaint, LatentDiffusionInpaintPipeline) and type(inpaint.scheduler) is DDPMScheduler


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, before any model runs
# ---------------------------------------------------------------------------------------------------------------------
def _embeds(batch: int, seq: int = 77) -> torch.Tensor:
    return torch.zeros(batch, seq, 32)


ERROR_CASES = [
    ("text", {"prompt": PROMPT, "prompt_embeds": _embeds(1)}, r"either `prompt` or `prompt_embeds`.*got both"),
    ("text", {"prompt": None}, r"one of `prompt`.*got neither"),
    ("text", {"prompt": [PROMPT, PROMPT], "negative_prompt": ["x"]}, r"`negative_prompt`: a list of 1 .* batch of 2"),
    (
        "text",
        {"prompt": None, "prompt_embeds": _embeds(1), "negative_prompt_embeds": _embeds(1, seq=10)},
        r"`negative_prompt_embeds`: shape \(1, 10, 32\) must equal .* \(1, 77, 32\)",
    ),
    ("text", {"generator": [torch.Generator()] * 3}, r"`generator`: a list of 3 generators for 1 images"),
    ("text", {"height": 33}, r"`height`: 33 must be a positive multiple of the VAE scale factor 2"),
    ("text", {"width": 31}, r"`width`: 31 must be a positive multiple"),
    ("text", {"guidance_scale": -1.0}, r"`guidance_scale`: -1.0 must be >= 0"),
    ("text", {"guidance_rescale": 1.5}, r"`guidance_rescale`: 1.5 must be in \[0, 1\]"),
    ("text", {"output_type": "jpg"}, r"`output_type`: 'jpg' must be one of \['pil', 'np', 'pt', 'latent'\]"),
    ("text", {"num_inference_steps": 0}, r"`num_inference_steps`: 0 must be an integer >= 1"),
    ("text", {"num_inference_steps": 1001}, r"`num_inference_steps`: 1001 cannot be larger than .*: 1000"),
    ("text", {"num_images_per_prompt": 0}, r"`num_images_per_prompt`: 0 must be an integer >= 1"),
    ("text", {"latents": torch.zeros(1, 4, 8, 8)}, r"`latents`: got shape \(1, 4, 8, 8\); expected \(1, 4, 16, 16\)"),
    (
        "text",
        {"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["latents", "unet"]},
        r"`callback_on_step_end_tensor_inputs`: \['unet'\] not allowed",
    ),
    ("img2img", {"strength": 1.5}, r"`strength`: 1.5 must be in \(0, 1\]"),
    ("img2img", {"strength": 0.0}, r"`strength`: 0.0 must be in \(0, 1\]"),
    ("img2img", {"strength": 0.1, "num_inference_steps": 3}, r"`strength`: 0.1 of 3 steps leaves .* 0 denoising"),
    ("img2img", {"image": None}, r"`image`: got NoneType"),
    ("img2img", {"image": torch.full((1, 3, 32, 32), 2.0)}, r"`image`: tensor values span \[2, 2\]"),
    ("img2img", {"image": np.zeros((32, 32, 4))}, r"`image`: shape \(32, 32, 4\) is not \(N\)HWC with 3 channels"),
    ("inpaint", {"mask_image": PIL.Image.new("L", (16, 16))}, r"`mask_image`: size \(16, 16\) .* `image`: \(32, 32\)"),
    ("inpaint", {"mask_image": None}, r"`mask_image`: got NoneType"),
    # How many images for how many prompts, and masks for images.
    ("img2img", {"prompt": [PROMPT, PROMPT], "image": [gradient_image()] * 3},
     r"`image`: got 3 images for 2 prompts x 1 images per prompt; pass 1, 2 or 2 images"),
    ("img2img", {"prompt": [PROMPT, PROMPT], "num_images_per_prompt": 2, "image": torch.zeros(3, 3, 32, 32)},
     r"`image`: got 3 images for 2 prompts x 2 images per prompt; pass 1, 2 or 4 images"),
    ("inpaint", {"prompt": [PROMPT] * 3, "image": [gradient_image()] * 2},
     r"`image`: got 2 images for 3 prompts x 1 images per prompt"),
    ("inpaint", {"prompt": [PROMPT, PROMPT], "image": [gradient_image()] * 2, "mask_image": [right_half_mask()] * 3},
     r"`mask_image`: got 3 masks for 2 images; pass one mask, or one per image"),
    ("inpaint", {"mask_image": torch.zeros(2, 1, 32, 32)}, r"`mask_image`: got 2 masks for 1 images"),
    ("inpaint", {"prompt": [PROMPT, PROMPT], "num_images_per_prompt": 2, "image": [gradient_image()] * 2,
                 "mask_image": [right_half_mask()] * 4}, r"`mask_image`: got 4 masks for 2 images"),
]


@pytest.mark.parametrize("kind,kwargs,match", ERROR_CASES, ids=[m.split(":")[0][:40] for _, _, m in ERROR_CASES])
def test_bad_input_raises_before_any_model_runs(tiny, kind, kwargs, match):
    cls = {"text": LatentDiffusionPipeline, "img2img": LatentDiffusionImg2ImgPipeline}.get(
        kind, LatentDiffusionInpaintPipeline
    )
    pipe = ours(cls, parts(tiny))
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in (tiny["unet"], tiny["text_encoder"])]
    arguments = {"prompt": PROMPT, "num_inference_steps": 2}
    if kind != "text":
        arguments["image"] = gradient_image()
    if kind == "inpaint":
        arguments["mask_image"] = right_half_mask()
    try:
        with pytest.raises(ValueError, match=match):
            pipe(**{**arguments, **kwargs})
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls, "a model ran before the argument check"


# Lists count the images in them (a list may hold batches, as diffusers' image processor allows), hold one kind of
# image, and one size: each of these used to pass the checks and fail, or resize silently, after the text encoder ran.
IMAGE_LIST_CASES = [
    ("img2img", {"image": [torch.zeros(2, 3, 32, 32)]}, r"`image`: got 2 images for 1 prompts"),
    ("inpaint", {"mask_image": [torch.zeros(2, 1, 32, 32)]}, r"`mask_image`: got 2 masks for 1 images"),
    ("inpaint", {"mask_image": np.zeros((3, 32, 32))}, r"`mask_image`: got 3 masks for 1 images"),  # (N, H, W)
    ("img2img", {"prompt": [PROMPT, PROMPT], "image": [gradient_image(), np.zeros((32, 32, 3))]},
     r"`image`: a list mixing PIL images and numpy arrays; pass a list of one kind"),
    ("inpaint", {"mask_image": [torch.zeros(1, 32, 32), right_half_mask()]},
     r"`mask_image`: a list mixing PIL images and tensors; pass a list of one kind"),
    ("img2img", {"prompt": [PROMPT, PROMPT], "image": [gradient_image(), gradient_image().resize((16, 16))]},
     r"`image`: the list holds images of sizes \[\(16, 16\), \(32, 32\)\] .* resized to \(32, 32\), the first"),
    ("img2img", {"prompt": [PROMPT, PROMPT], "image": [np.zeros((32, 32, 3)), np.zeros((32, 16, 3))]},
     r"`image`: the list holds images of sizes \[\(32, 16\), \(32, 32\)\]"),
    ("inpaint", {"prompt": [PROMPT, PROMPT], "image": [gradient_image()] * 2,
                 "mask_image": [right_half_mask(), right_half_mask().resize((32, 16))]},
     r"`mask_image`: the list holds images of sizes \[\(16, 32\), \(32, 32\)\]"),
    ("img2img", {"prompt": [PROMPT, PROMPT], "image": [torch.zeros(3, 32, 32), torch.zeros(1, 3, 32, 32)]},
     r"`image`: a list of arrays or tensors with \[3, 4\] dimensions"),
    ("img2img", {"image": [gradient_image(), "cat.png"]}, r"`image`: got a list of \['Image', 'str'\]; pass a PIL"),
    ("img2img", {"image": []}, r"`image`: got an empty list; pass a PIL image"),
    ("img2img", {"image": torch.zeros(1, 1, 3, 32, 32)}, r"`image`: shape \(1, 1, 3, 32, 32\) has 5 dimensions"),
    ("inpaint", {"mask_image": torch.zeros(1, 3, 32, 32)},
     r"`mask_image`: shape \(1, 3, 32, 32\) is not \(N\)CHW with 1 channel, a single-channel mask"),
]


@pytest.mark.parametrize(
    "kind,kwargs,match", IMAGE_LIST_CASES, ids=[m.split(";")[0][:40] for _, _, m in IMAGE_LIST_CASES]
)
def test_image_lists_are_checked_before_any_model_runs(tiny, kind, kwargs, match):
    test_bad_input_raises_before_any_model_runs(tiny, kind, kwargs, match)


def test_images_and_masks_count_the_same_in_any_accepted_form(tiny):
    """Two images and two masks as batches, as a list holding a batch, and as lists of single images (PIL masks and
    an (N, H, W) array of masks, as diffusers' mask processor reads one): the same images come out."""
    pipe = ours(LatentDiffusionInpaintPipeline, parts(tiny, "ddim"))
    pixels = torch.from_numpy(np.asarray(gradient_image()).astype(np.float32) / 255).permute(2, 0, 1) * 2 - 1
    images = torch.stack([pixels, pixels.flip(-1)])  # (2, 3, 32, 32) in [-1, 1]
    masks = np.zeros((2, 32, 32), dtype=np.float32)
    masks[0, :, 16:] = masks[1, :16] = 1
    mask_images = [PIL.Image.fromarray((m * 255).astype(np.uint8)) for m in masks]
    kwargs = {"prompt": [PROMPT, "a green triangle"], "num_inference_steps": 2, "output_type": "np"}
    reference = pipe(**kwargs, image=images, mask_image=torch.from_numpy(masks)[:, None], generator=gen(0)).images
    for image, mask_image in [([images], masks), (list(images), mask_images), (list(images), [masks[..., None]])]:
        np.testing.assert_array_equal(pipe(**kwargs, image=image, mask_image=mask_image, generator=gen(0)).images,
                                      reference)  # fmt: skip


def test_long_prompt_is_truncated_with_a_warning(tiny, caplog):
    pipe = ours(LatentDiffusionPipeline, parts(tiny))
    long_prompt = "a small red circle on a white background " * 12  # ~98 tokens
    with caplog.at_level(logging.WARNING):
        prompt_embeds, _ = pipe.encode_prompt(long_prompt)
    assert prompt_embeds.shape == (1, 77, 32)
    assert "truncated to 77 tokens" in caplog.text and "circle on a white background" in caplog.text
