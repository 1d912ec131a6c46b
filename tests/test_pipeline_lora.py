"""LoRA in the pipelines (diffusers' StableDiffusionLoraLoaderMixin on LatentDiffusionPipeline), the files that do not
fit (pipelines/lora.py), the kohya layout, and the rest of StableDiffusionPipeline parity: per-call LoRA scale,
`sigmas`, FreeU, fused QKV, the steps_offset choice. Tiny real models; LoRA files made by peft + diffusers' own
`save_lora_weights`, as diffusers' training scripts make them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import NO_SCULPT, make_components
from conftest import make_lora_file as make_lora
from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline

from pipelines import LatentDiffusionImg2ImgPipeline, LatentDiffusionInpaintPipeline, LatentDiffusionPipeline
from pipelines.lora import to_kohya

peft = pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
from peft import LoraConfig  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

PROMPT = "a small red circle on a white background"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def ours(cls=LatentDiffusionPipeline, **overrides):
    pipe = cls(**{**make_components(), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stable_diffusion(**overrides):
    pipe = StableDiffusionPipeline(**{**make_components(), **overrides}, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs) -> np.ndarray:
    kwargs.setdefault("guidance_scale", 3.0)
    return pipe(PROMPT, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0),
                **kwargs).images  # fmt: skip


def has_adapters(module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


# ---------------------------------------------------------------------------------------------------------------------
# Loading, as in StableDiffusionPipeline
# ---------------------------------------------------------------------------------------------------------------------
def test_a_diffusers_lora_gives_the_same_images_in_sculpt_and_in_stable_diffusion(tmp_path):
    lora = make_lora(tmp_path / "lora", text_encoder=True)
    base = run(ours())
    pipe, sd = ours(), stable_diffusion()
    pipe.load_lora_weights(lora)
    sd.load_lora_weights(lora)
    assert has_adapters(pipe.unet) and has_adapters(pipe.text_encoder)
    images = run(pipe)
    np.testing.assert_allclose(images, run(sd), atol=1e-6)
    assert np.abs(images - base).max() > 0.05  # the LoRA changes what is drawn


def test_scale_fuse_unfuse_and_unload(tmp_path):
    """Each step as in StableDiffusionPipeline (the same images after each), and what each step means."""
    lora = make_lora(tmp_path / "lora", text_encoder=True)
    pipe, sd = ours(), stable_diffusion()
    base = run(pipe)
    steps = {}
    for p in (pipe, sd):
        p.load_lora_weights(lora)
        steps.setdefault("full", []).append(run(p))
        steps.setdefault("scale 0", []).append(run(p, cross_attention_kwargs={"scale": 0.0}))
        steps.setdefault("scale 0.5", []).append(run(p, cross_attention_kwargs={"scale": 0.5}))
        p.fuse_lora(lora_scale=0.5)
        steps.setdefault("fused at 0.5", []).append(run(p))
        p.unfuse_lora()  # diffusers leaves the layers at the fused scale: not "full" again, in either pipeline
        steps.setdefault("unfused", []).append(run(p))
        p.unload_lora_weights()
        steps.setdefault("unloaded", []).append(run(p))
    for step, (a, b) in steps.items():
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=step)
    full, half = steps["full"][0], steps["scale 0.5"][0]
    np.testing.assert_allclose(steps["scale 0"][0], base, atol=1e-6)  # scale 0: the base model
    assert np.abs(half - base).max() > 1e-3 and np.abs(half - full).max() > 1e-3
    # The per-call scale and a fused scale are the same LoRA strength (diffusers' test_lora_scale_kwargs_match_fusion).
    np.testing.assert_allclose(steps["fused at 0.5"][0], half, atol=1e-4)
    assert not has_adapters(pipe.unet) and not has_adapters(pipe.text_encoder)
    np.testing.assert_allclose(steps["unloaded"][0], base, atol=1e-6)


def test_several_adapters_with_weights(tmp_path):
    pipe = ours()
    pipe.load_lora_weights(make_lora(tmp_path / "a", seed=1), adapter_name="a")
    pipe.load_lora_weights(make_lora(tmp_path / "b", seed=2), adapter_name="b")
    assert pipe.get_list_adapters() == {"unet": ["a", "b"]}
    pipe.set_adapters(["a"])
    only_a = run(pipe)
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.0])  # b at weight 0: a alone
    np.testing.assert_allclose(run(pipe), only_a, atol=1e-6)
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 1.0])
    assert np.abs(run(pipe) - only_a).max() > 1e-3
    pipe.delete_adapters(["b"])
    assert pipe.get_list_adapters() == {"unet": ["a"]}
    np.testing.assert_allclose(run(pipe), only_a, atol=1e-6)


def test_img2img_and_inpainting_load_and_scale_loras(tmp_path):
    lora = make_lora(tmp_path / "lora")
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:, 16:] = 1
    for cls, extra in ((LatentDiffusionImg2ImgPipeline, {"image": image, "strength": 0.7}),
                       (LatentDiffusionInpaintPipeline, {"image": image, "mask_image": mask})):  # fmt: skip
        pipe = ours(cls)
        base = run(pipe, **extra)
        pipe.load_lora_weights(lora)
        assert np.abs(run(pipe, **extra) - base).max() > 1e-3, cls.__name__
        np.testing.assert_allclose(run(pipe, **extra, cross_attention_kwargs={"scale": 0.0}), base, atol=1e-6)


def test_alpha_comes_from_the_files_metadata(tmp_path):
    """α = 8 with r = 4 doubles the LoRA's effect; a file without metadata is read as α = r (diffusers' rule), so
    the two files differ."""
    with_metadata, without = make_lora(tmp_path / "a", alpha=8), make_lora(tmp_path / "b", alpha=8, metadata=False)
    pipe_a, pipe_b = ours(), ours()
    pipe_a.load_lora_weights(with_metadata)
    pipe_b.load_lora_weights(without)
    np.testing.assert_allclose(run(pipe_b, cross_attention_kwargs={"scale": 2.0}), run(pipe_a), atol=1e-5)


def test_a_saved_folder_loads_loras_without_sculpt(tmp_path):
    """The loader is diffusers', so the shipped pipeline file has it too: trust_remote_code, sculpt not importable."""
    folder, lora = tmp_path / "model", make_lora(tmp_path / "lora")
    pipe = ours()
    pipe.save_pretrained(folder)
    pipe.load_lora_weights(lora)
    expected = run(pipe)
    script = tmp_path / "script.py"
    script.write_text(NO_SCULPT + textwrap.dedent(f"""
        import json, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights({str(lora)!r})
        images = pipe({PROMPT!r}, num_inference_steps=3, guidance_scale=3.0, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        json.dump({{"class": type(pipe).__name__, "images": images.tolist()}}, open("out.json", "w"))
    """))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["class"] == "LatentDiffusionPipeline"
    np.testing.assert_allclose(np.array(out["images"]), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Files that do not fit: one named error, nothing injected
# ---------------------------------------------------------------------------------------------------------------------
def other_unet_lora(tmp_path):
    """A LoRA for a UNet of other widths (block_out_channels 16, 32): the same layer names, other shapes."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, down_block_types=("DownBlock2D",
                                "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                cross_attention_dim=32, attention_head_dim=4)  # fmt: skip
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "other", unet_lora_layers=get_peft_model_state_dict(unet))
    return tmp_path / "other"


def test_a_lora_for_another_architecture_is_refused_before_anything_is_injected(tmp_path):
    pipe = ours()
    with pytest.raises(ValueError, match=r"^`pretrained_model_name_or_path_or_dict`: '.*other': the unet layer "
                                         r"'down_blocks\.1\.attentions\.0\..*' maps 16 → 16 features here, but the "
                                         r"file's LoRA matrices are A \(4, 32\) and B \(32, 4\) .*another model"):
        pipe.load_lora_weights(other_unet_lora(tmp_path))
    assert not has_adapters(pipe.unet)
    # A file for layers this UNet does not have (an SDXL-style extra block), and one for a model with a transformer.
    state = load_file(make_lora(tmp_path / "lora") / "pytorch_lora_weights.safetensors")
    renamed = {k.replace("down_blocks.1.", "down_blocks.7."): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"\(a state dict\): has LoRA weights for 8 of its 32 unet layers that this "
                                         r"unet \(UNet2DConditionModel\) does not have, e\.g\. 'down_blocks\.7\."):
        pipe.load_lora_weights(renamed)
    with pytest.raises(ValueError, match=r"has LoRA weights for 'transformer', which this pipeline does not have"):
        pipe.load_lora_weights({k.replace("unet.", "transformer.", 1): v for k, v in state.items()})
    assert not has_adapters(pipe.unet)


def test_a_kohya_file_with_unknown_keys_is_refused(tmp_path):
    state = load_file(make_lora(tmp_path / "lora") / "pytorch_lora_weights.safetensors")
    kohya = to_kohya(state, {"unet": 8})
    pipe = ours()
    unknown = {**kohya, "lora_unet_mid_block_resnets_9_conv1.lora_down.weight": torch.zeros(4, 16, 3, 3),
               "lora_unet_mid_block_resnets_9_conv1.lora_up.weight": torch.zeros(16, 4, 1, 1)}  # fmt: skip
    save_file(unknown, tmp_path / "unknown.safetensors")
    with pytest.raises(ValueError, match=r"\(weight_name 'unknown\.safetensors'\): has LoRA weights for 1 of its 33 "
                                         r"unet layers .* e\.g\. 'mid_block\.resnets\.9\.conv1'"):
        pipe.load_lora_weights(tmp_path, weight_name="unknown.safetensors")
    save_file({**kohya, "lora_unet_something.else": torch.zeros(1)}, tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match=r"junk\.safetensors.*not a LoRA file diffusers can read \(The following keys "
                                         r"have not been correctly renamed: lora_unet_something\.else\)"):
        pipe.load_lora_weights(tmp_path, weight_name="junk.safetensors")
    assert not has_adapters(pipe.unet)


def test_kohya_layout_round_trips_with_alpha(tmp_path):
    """diffusers → kohya (`to_kohya`, α from the metadata, not diffusers' α = r) → loaded back: the same images, in
    sculpt and in StableDiffusionPipeline. The text encoder's keys are sd-scripts' SD 1.x names (lora_te_text_model_...)."""
    lora = make_lora(tmp_path / "lora", alpha=8, text_encoder=True)
    state = load_file(lora / "pytorch_lora_weights.safetensors")
    kohya = to_kohya(state, {"unet": 8.0, "text_encoder": 2.0})
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in kohya)
    assert kohya["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha"].item() == 8.0
    save_file(kohya, tmp_path / "kohya.safetensors")
    expected = ours()
    expected.load_lora_weights(lora)
    for pipe in (ours(), stable_diffusion()):
        pipe.load_lora_weights(tmp_path, weight_name="kohya.safetensors")
        np.testing.assert_allclose(run(pipe), run(expected), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# The rest of StableDiffusionPipeline's surface
# ---------------------------------------------------------------------------------------------------------------------
def test_sigmas_match_stable_diffusion_and_are_checked():
    sigmas = [14.6, 6.0, 2.0, 0.6, 0.1]
    scheduler = EulerDiscreteScheduler.from_config(make_components()["scheduler"].config)
    ours_images = run(ours(scheduler=scheduler), sigmas=sigmas)
    sd = stable_diffusion(scheduler=EulerDiscreteScheduler.from_config(scheduler.config))
    np.testing.assert_allclose(ours_images, run(sd, sigmas=sigmas), atol=1e-6)
    with pytest.raises(ValueError, match=r"^`sigmas`: DDPMScheduler\.set_timesteps takes no custom sigmas"):
        run(ours(), sigmas=sigmas)
    with pytest.raises(ValueError, match=r"either `timesteps` or `sigmas`"):
        run(ours(scheduler=scheduler), sigmas=sigmas, timesteps=[999, 500])
    with pytest.raises(ValueError, match=r"^`cross_attention_kwargs`: its 'scale' 'x' must be a number"):
        run(ours(), cross_attention_kwargs={"scale": "x"})


def test_freeu_and_fused_qkv_as_in_stable_diffusion():
    pipe, sd = ours(), stable_diffusion()
    base = run(pipe)
    for p in (pipe, sd):
        p.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    freeu = run(pipe)
    np.testing.assert_allclose(freeu, run(sd), atol=1e-6)
    assert np.abs(freeu - base).max() > 1e-3
    pipe.disable_freeu()
    np.testing.assert_allclose(run(pipe), base, atol=1e-6)
    pipe.fuse_qkv_projections()
    np.testing.assert_allclose(run(pipe), base, atol=1e-4)
    pipe.unfuse_qkv_projections()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    np.testing.assert_allclose(run(pipe), base, atol=1e-4)


def test_steps_offset_0_is_kept_with_a_warning_where_stable_diffusion_rewrites_it(caplog):
    old = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                        steps_offset=0)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        pipe = ours(scheduler=old)
    assert "steps_offset=0; it is kept" in caplog.text
    assert pipe.scheduler.config.steps_offset == 0
    with pytest.warns(FutureWarning, match="steps_offset"):
        sd = stable_diffusion(scheduler=PNDMScheduler.from_config(old.config))
    assert sd.scheduler.config.steps_offset == 1
    assert np.abs(run(pipe) - run(sd)).max() > 1e-4  # the same folder, other images
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, steps_offset=1)  # the docstring's recipe
    np.testing.assert_allclose(run(pipe), run(sd), atol=1e-6)
