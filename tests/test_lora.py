"""`training_mode: lora` (training/lora.py) and DreamBooth's prior preservation (training/dreambooth.py), on a tiny real
base model saved as a sculpt pipeline folder: what trains, what a checkpoint holds, exact resume (one process and two),
the file in diffusers' format loading in sculpt and in StableDiffusionPipeline with the same images, and every bad
input named before anything is written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import accelerate_launch, make_components, tiny
from safetensors.torch import load_file

from training.config import load_config
from training.train import main

pytest.importorskip("peft", reason="training_mode lora needs peft: pip install -e '.[lora]'")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
PROMPT = "a small red circle on a white background"
LORA = ["training_mode=lora", "train_text_encoder=false", "validation_prompts=[]", "lora_rank=4", "lora_alpha=8"]

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The base model: the tiny components as a sculpt pipeline folder."""
    from pipelines import LatentDiffusionPipeline

    folder = tmp_path_factory.mktemp("base") / "model"
    LatentDiffusionPipeline(**make_components()).save_pretrained(folder)
    return folder


def lora_config(out: Path, base: Path, *overrides: str):
    return tiny(out, f"pretrained_model_name_or_path={base}", *LORA, *overrides)


def sample(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=3, guidance_scale=2.0, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> Path:
    """12 LoRA steps with EMA, checkpoints at 6 and 12."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    out = tmp_path_factory.mktemp("lora") / "run"
    main(lora_config(out, base, "max_train_steps=12", "checkpointing_steps=6", "use_ema=true", "ema_decay=0.9"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# What trains and what is written
# ---------------------------------------------------------------------------------------------------------------------
def test_only_the_adapters_train_and_the_outputs_are_small(trained, base):
    weights = load_file(trained / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ".lora." in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if ".lora.up." in k)  # B started at 0 and moved
    # 4 bytes per adapter weight plus the header; a tenth of even this toy UNet (docs/lora.md: 1% of the shapes one).
    size = (trained / "pytorch_lora_weights.safetensors").stat().st_size
    assert size < 4 * sum(v.numel() for v in weights.values()) + 16384  # header: keys and LoraConfig
    unet_file = base / "unet" / "diffusion_pytorch_model.safetensors"
    assert size < 0.1 * unet_file.stat().st_size
    assert not (trained / "unet").exists() and not (trained / "model_index.json").exists()
    # A checkpoint holds the adapters, their optimizer state and the EMA of the adapters, not the frozen UNet.
    checkpoint = trained / "checkpoint-12"
    names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert {"pytorch_lora_weights.safetensors", "optimizer.bin", "unet_ema/adapter_ema.safetensors"} <= names
    assert not [n for n in names if n.startswith(("model", "pytorch_model"))], names
    assert sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) < unet_file.stat().st_size
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    assert sum(s["exp_avg"].numel() for s in optimizer["state"].values()) == sum(v.numel() for v in weights.values())
    # The saved file is the EMA of the adapters (ema_decay 0.9), not the raw weights the checkpoint holds.
    raw = load_file(checkpoint / "pytorch_lora_weights.safetensors")
    assert raw.keys() == weights.keys() and any(not torch.equal(raw[k], weights[k]) for k in raw)
    # The adapter files have the mode of the run's other files (diffusers writes them 0600 through a temporary file).
    mode = (trained / "README.md").stat().st_mode & 0o777
    assert {(f / "pytorch_lora_weights.safetensors").stat().st_mode & 0o777 for f in (trained, checkpoint)} == {mode}
    card = (trained / "README.md").read_text()
    assert "load_lora_weights" in card and str(base) in card and "rank 4, α 8" in card and "- lora" in card


def test_the_file_loads_in_sculpt_and_in_stable_diffusion_with_the_same_images(trained, base):
    from diffusers import StableDiffusionPipeline

    from pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(base)
    before = sample(pipe)
    pipe.load_lora_weights(trained)
    ours = sample(pipe)
    assert np.abs(ours - before).max() > 1e-4
    sd = StableDiffusionPipeline(**LatentDiffusionPipeline.from_pretrained(base).components, safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    sd.load_lora_weights(trained)
    np.testing.assert_allclose(sample(sd), ours, atol=1e-6)


def test_the_base_stays_frozen(base, tmp_path, partial_state):
    """The adapters' gradients never reach the base: with the adapters unloaded, the training UNet is the base's."""
    from diffusers import UNet2DConditionModel

    from training import lora
    from training.models import load_unet

    config = lora_config(tmp_path, base)
    unet = load_unet(config)
    lora.add_adapters(config, unet, make_components()["text_encoder"])
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    loss = unet(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 77, 32)).sample.square().mean()
    loss.backward()
    assert all(p.grad is None for n, p in unet.named_parameters() if not p.requires_grad)
    original = UNet2DConditionModel.from_pretrained(base, subfolder="unet").state_dict()
    unet.unload_lora()
    assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items())


def test_conv_targets_write_one_layout_that_loads_whole_in_both_pipelines(base, tmp_path):
    """Attention projections plus ResNet convs: diffusers' converter would rename only the projections, and diffusers'
    loader, choosing one layout by the first key, would then drop half of the adapters. The file keeps one layout."""
    from diffusers import StableDiffusionPipeline

    from pipelines import LatentDiffusionPipeline

    main(lora_config(tmp_path / "run", base, "max_train_steps=2", "learning_rate=1e-2", "use_ema=false",
                     "lora_target_modules=[to_q,to_k,to_v,to_out.0,conv1]"))  # fmt: skip
    weights = load_file(tmp_path / "run" / "pytorch_lora_weights.safetensors")
    assert all(".lora_A." in k or ".lora_B." in k for k in weights), sorted(weights)[:4]
    assert any(".conv1." in k for k in weights) and any(".to_q." in k for k in weights)
    ours = LatentDiffusionPipeline.from_pretrained(base)
    ours.load_lora_weights(tmp_path / "run")
    sd = StableDiffusionPipeline(**LatentDiffusionPipeline.from_pretrained(base).components, safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    sd.load_lora_weights(tmp_path / "run")
    for pipe in (ours, sd):  # every adapter of the file is in the UNet: 2 tensors per adapted layer
        adapted = {n.rsplit(".", 1)[0] for n, _ in pipe.unet.named_modules() if n.endswith(".lora_A")}
        assert 2 * len(adapted) == len(weights) and any(n.endswith("conv1") for n in adapted)
    np.testing.assert_allclose(sample(sd), sample(ours), atol=1e-6)


def test_a_file_mixing_two_layouts_is_refused_by_name(base, tmp_path):
    """A file with `to_q.lora.down` beside `conv1.lora_A` (as earlier sculpt versions wrote for conv targets) would
    lose half its layers in diffusers' loader; sculpt names the two layouts instead of loading part of it."""
    from safetensors.torch import save_file

    from pipelines import LatentDiffusionPipeline

    main(lora_config(tmp_path / "run", base, "max_train_steps=1", "use_ema=false",
                     "lora_target_modules=[to_q,conv1]"))  # fmt: skip
    weights = load_file(tmp_path / "run" / "pytorch_lora_weights.safetensors")
    mixed = {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.") if ".to_q." in k else k: v
             for k, v in weights.items()}  # fmt: skip
    (tmp_path / "mixed").mkdir()
    save_file(mixed, str(tmp_path / "mixed" / "pytorch_lora_weights.safetensors"))
    pipe = LatentDiffusionPipeline.from_pretrained(base)
    with pytest.raises(ValueError, match=r"mixes two layouts in its unet weights.*lora_A.*lora\.down"):
        pipe.load_lora_weights(tmp_path / "mixed")
    assert not any(n.endswith(".lora_A") for n, _ in pipe.unet.named_modules())  # nothing half-loaded


def test_text_encoder_adapters_train_and_load(base, tmp_path):
    from pipelines import LatentDiffusionPipeline

    main(lora_config(tmp_path / "run", base, "train_text_encoder_lora=true", "max_train_steps=4", "learning_rate=1e-2",
                     "cache_text_embeddings=false", "use_ema=false"))
    weights = load_file(tmp_path / "run" / "pytorch_lora_weights.safetensors")
    text = {k for k in weights if k.startswith("text_encoder.")}
    assert text and all("self_attn" in k for k in text) and any(k.startswith("unet.") for k in weights)
    pipe = LatentDiffusionPipeline.from_pretrained(base)
    before = sample(pipe)
    pipe.load_lora_weights(tmp_path / "run")
    embeds = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]
    off = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, lora_scale=0.0)[0]
    assert (embeds - off).abs().max() > 1e-5  # the text encoder's adapters act, and the per-call scale reaches them
    assert np.abs(sample(pipe) - before).max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Exact resume: one process, two processes
# ---------------------------------------------------------------------------------------------------------------------
def assert_same_run(a: Path, b: Path) -> None:
    for name in ("pytorch_lora_weights.safetensors", "checkpoint-12/pytorch_lora_weights.safetensors",
                 "checkpoint-12/unet_ema/adapter_ema.safetensors"):  # fmt: skip
        if not (a / name).exists():
            continue
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    opt_a = torch.load(a / "checkpoint-12" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(b / "checkpoint-12" / "optimizer.bin", weights_only=True)
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((a / "loss_history.json").read_text()) == json.loads((b / "loss_history.json").read_text())


def test_resume_matches_an_uninterrupted_run_bit_for_bit(trained, base, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained / "checkpoint-6", resumed / "checkpoint-6")
    main(lora_config(resumed, base, "max_train_steps=12", "checkpointing_steps=6", "use_ema=true", "ema_decay=0.9",
                     "resume_from_checkpoint=latest"))
    assert_same_run(trained, resumed)
    # Another rank cannot resume it: the settings that decide what is trained are in the checkpoint.
    with pytest.raises(ValueError, match=r"other settings: lora_rank: 4 there, 8 now"):
        main(lora_config(resumed, base, "max_train_steps=12", "checkpointing_steps=6", "use_ema=true",
                         "ema_decay=0.9", "resume_from_checkpoint=latest", "lora_rank=8"))


@pytest.mark.slow  # two 2-process launches: ~1 min on 2 quiet cores, 3 min on busy ones
def test_two_processes_resume_exactly(base, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo DDP on CPU): killed after the step-6 checkpoint and
    resumed, the run ends where an uninterrupted one does, bit for bit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [f"pretrained_model_name_or_path={base}", *LORA, "max_train_steps=12", "checkpointing_steps=6",
              "train_batch_size=2", "use_ema=true", "ema_decay=0.9", "validation_steps=null"]

    def launch(out: Path, *extra: str) -> None:
        result = subprocess.run([*accelerate_launch(2, port=29571), str(ROOT / "scripts" / "train.py"), "--config",
                                 TINY, f"output_dir={out}", *common, *extra],
                                capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    launch(tmp_path / "full")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-6", resumed / "checkpoint-6")
    launch(resumed, "resume_from_checkpoint=latest")
    assert_same_run(tmp_path / "full", resumed)


# ---------------------------------------------------------------------------------------------------------------------
# DreamBooth: one caption with a rare token, prior preservation
# ---------------------------------------------------------------------------------------------------------------------
def instance_images(tmp_path: Path) -> Path:
    """DreamBooth's training images: a plain folder of 4 orange shapes, which the instance prompt captions."""
    from training.builtin.shapes import make_shapes_sample

    images = tmp_path / "instance"
    images.mkdir()
    for index in range(4):
        make_shapes_sample(index, 32, 0, ("orange",))[0].save(images / f"{index}.png")
    return images


def test_dreambooth_with_prior_preservation(base, tmp_path):
    images = instance_images(tmp_path)
    config = lora_config(tmp_path / "run", base, "dataset_name=", f"train_data_dir={images}", "train_batch_size=2",
                         "instance_prompt=a sks shape", "with_prior_preservation=true", "num_class_images=6",
                         "class_prompts=[a small red circle on a white background,a large blue square on a black "
                         "background]", "class_num_inference_steps=2", "max_train_steps=3", "use_ema=false",
                         "random_flip=false")  # fmt: skip
    main(config)
    class_dir = tmp_path / "run" / "class_images"
    rows = [json.loads(line) for line in (class_dir / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["text"].startswith("a small red") and rows[1]["text"].startswith("a large blue")
    assert "`sks`" in (tmp_path / "run" / "README.md").read_text()  # the trigger word on the card
    drawn = {p.name: p.read_bytes() for p in class_dir.glob("*.png")}
    # A second run reuses the class images it finds rather than drawing them again.
    main(load_config(str(tmp_path / "run" / "config.yaml"), ["overwrite_output_dir=true"]))
    assert {p.name: p.read_bytes() for p in class_dir.glob("*.png")} == drawn


def test_two_processes_share_the_class_images_and_draw_the_same_ones(base, tmp_path):
    """Each of 2 processes draws its share of the batches of 16 (as diffusers' DreamBooth scripts spread the class
    images over the processes); image i comes from its own seeded generator in the same batch, so the 40 images and
    the metadata are those one process draws."""
    images = instance_images(tmp_path)
    prior = ["dataset_name=", f"train_data_dir={images}", "train_batch_size=2", "instance_prompt=a sks shape",
             "with_prior_preservation=true", "num_class_images=40", "class_num_inference_steps=2",
             "class_prompts=[a small red circle on a white background,a large blue square on a black background,"
             "a small green triangle on a gray background]", "max_train_steps=1", "use_ema=false", "random_flip=false",
             "checkpointing_steps=null", "validation_steps=null"]  # fmt: skip
    main(lora_config(tmp_path / "one", base, *prior))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*accelerate_launch(2, port=29573), str(ROOT / "scripts" / "train.py"), "--config", TINY,
                             f"output_dir={tmp_path / 'two'}", f"pretrained_model_name_or_path={base}", *LORA, *prior],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "one" / "class_images", tmp_path / "two" / "class_images"
    drawn = {p.name: p.read_bytes() for p in one.glob("*.png")}
    assert len(drawn) == 40 and {p.name: p.read_bytes() for p in two.glob("*.png")} == drawn
    assert (one / "metadata.jsonl").read_text() == (two / "metadata.jsonl").read_text()
    rows = [json.loads(line) for line in (two / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == [f"class-{i:06d}.png" for i in range(40)]
    assert rows[3]["text"] == rows[0]["text"] == "a small red circle on a white background"


def captioned_class_images(folder: Path, count: int, seed: int) -> Path:
    """Real class images ("regularisation images"): an imagefolder of built-in shapes with their own captions."""
    from training.builtin.shapes import make_shapes_dataset
    from training.data import write_imagefolder

    return write_imagefolder(make_shapes_dataset(count, 32, seed), folder)


def test_real_captioned_class_images_need_no_class_prompts_and_are_only_read(base, tmp_path, caplog):
    """A class_data_dir that already holds num_class_images captioned images is the prior as it is: nothing is
    drawn, its files are not touched, and they are what the run trains on (another folder, other weights)."""
    caplog.set_level(logging.INFO, logger="training.train")
    images = instance_images(tmp_path)
    weights = {}
    for seed in (1, 2):
        classes = captioned_class_images(tmp_path / f"classes-{seed}", 6, seed)
        before = {p.name: p.read_bytes() for p in classes.iterdir()}
        main(lora_config(tmp_path / f"run-{seed}", base, "dataset_name=", f"train_data_dir={images}",
                         "train_batch_size=2", "instance_prompt=a sks shape", "with_prior_preservation=true",
                         f"class_data_dir={classes}", "num_class_images=6", "max_train_steps=3", "use_ema=false",
                         "random_flip=false"))  # fmt: skip
        assert {p.name: p.read_bytes() for p in classes.iterdir()} == before
        assert not (tmp_path / f"run-{seed}" / "class_images").exists()
        assert f"`{classes}`" in (tmp_path / f"run-{seed}" / "README.md").read_text()  # the card names the prior
        assert "batch 4/process x 1 accumulation = 4" in caplog.text  # 2 training + 2 class images a step
        weights[seed] = load_file(tmp_path / f"run-{seed}" / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in weights[1])


@pytest.mark.parametrize("make, match", [
    (lambda d: None, r"^`class_data_dir`: '.*classes' is not a folder; without `class_prompts` it must hold the 6 "
                     r"class images"),
    (lambda d: captioned_class_images(d, 4, 0), r"^`class_data_dir`: '.*classes' holds 4 images \(.png.*\), fewer "
                                                r"than `num_class_images`: 6; add images"),
    (lambda d: (captioned_class_images(d, 6, 0), (d / "metadata.jsonl").unlink()),
     r"^`class_data_dir`: '.*classes' has no caption for 6 of its images \(e\.g\. '000000\.png'\)"),
])
def test_class_images_that_cannot_be_drawn_are_named_before_anything_is_written(base, tmp_path, make, match):
    images, classes = instance_images(tmp_path), tmp_path / "classes"
    make(classes)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        main(lora_config(tmp_path / "out", base, "dataset_name=", f"train_data_dir={images}", "train_batch_size=2",
                         "instance_prompt=a sks shape", "with_prior_preservation=true", f"class_data_dir={classes}",
                         "num_class_images=6"))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_prior_batches_pair_training_and_class_images():
    from training.data import EpochSampler
    from training.dreambooth import PriorBatchSampler

    sampler = EpochSampler(list(range(3 + 8)), seed=0)  # 3 training images, 8 class images
    batches = list(PriorBatchSampler(sampler, num_instance=3, batch_size=2))
    assert len(batches) == 4  # max(3, 8) // 2
    for batch in batches:
        assert all(i < 3 for i in batch[:2]) and all(i >= 3 for i in batch[2:])
    assert sorted(i for b in batches for i in b[2:]) == list(range(3, 11))  # every class image once per epoch
    with pytest.raises(ValueError, match=r"`train_batch_size`: 9 is larger than both the 3 training and the 8 class"):
        PriorBatchSampler(sampler, num_instance=3, batch_size=9)


def test_prior_batches_are_dealt_whole_to_the_processes_of_a_multi_process_run():
    """accelerate's BatchSamplerShard (what `prepare` wraps the batch sampler in at 2 processes) gives each process
    whole batches of 2 × batch_size, alternately, the same number each; before, it waited for batches of
    batch_size, and a process got an empty batch."""
    from accelerate.data_loader import BatchSamplerShard

    from training.data import EpochSampler
    from training.dreambooth import PriorBatchSampler

    prior = PriorBatchSampler(EpochSampler(list(range(20 + 22)), seed=0), num_instance=20, batch_size=4)
    batches = list(prior)
    assert len(batches) == 5 and all(len(batch) == 8 for batch in batches)
    shards = [list(BatchSamplerShard(prior, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert shards == [batches[0:4:2], batches[1:4:2]]  # the odd fifth batch is dropped: 2 steps of 2 × 8


def test_prior_preservation_loss_is_dreambooths():
    from diffusers import DDPMScheduler

    from training.loss import diffusion_loss

    pred, target = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    is_prior = torch.tensor([False, False, True, True])
    per_sample = (pred - target).square().mean(dim=(1, 2, 3))
    expected = per_sample[:2].mean() + 0.5 * per_sample[2:].mean()
    loss = diffusion_loss(pred, target, torch.tensor([1, 2, 3, 4]), DDPMScheduler(), None, is_prior, 0.5)
    assert torch.allclose(loss, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: named, before anything is written
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (["lora_rank=0"], r"^`lora_rank`: 0 must be ≥ 1"),
    (["lora_rank=-2"], r"^`lora_rank`: -2 must be ≥ 1"),
    (["train_text_encoder=true"], r"^`train_text_encoder`: true trains the whole text encoder, which contradicts "
                                  r"`training_mode`: 'lora'.*train_text_encoder_lora=true"),
    (["pretrained_model_name_or_path="], r"^`training_mode`: 'lora' adapts a trained model, but the unet, "
                                         r"text_encoder, tokenizer, vae would be built from scratch"),
    (["training_mode=full", "train_text_encoder_lora=true"], r"^`train_text_encoder_lora`: true needs `training_mode`"),
    (["with_prior_preservation=true"], r"^`with_prior_preservation`: true needs `class_prompts` \(what the base "
                                       r"model draws .*\) or a `class_data_dir` of captioned class images"),
    (["lora_target_modules=[]"], r"^`lora_target_modules`: \[\] must be a non-empty list"),
])
def test_bad_lora_settings_are_named_by_the_config(base, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        lora_config(tmp_path / "out", base, *overrides)


def test_target_modules_that_match_nothing_are_named_before_anything_is_written(base, tmp_path):
    with pytest.raises(ValueError, match=r"^`lora_target_modules`: \['to_qq', 'attn3\.to_k'\] match no linear or "
                                         r"conv layer of the UNet from pretrained_model_name_or_path=.*; its layers "
                                         r"end in .*to_q"):
        main(lora_config(tmp_path / "out", base, "lora_target_modules=[to_q,to_qq,attn3.to_k]"))
    assert not (tmp_path / "out").exists()


def test_a_base_folder_without_a_unet_is_named_before_anything_is_written(base, tmp_path):
    no_unet = tmp_path / "no-unet"
    shutil.copytree(base, no_unet, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ValueError, match=r"^`pretrained_model_name_or_path`: '.*no-unet' has no unet/ folder \(the "
                                         r"unet\)"):
        main(lora_config(tmp_path / "out", no_unet))
    assert not (tmp_path / "out").exists()


def test_cli_bad_lora_input_is_one_line_exit_2(base, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={tmp_path / 'out'}",
         f"pretrained_model_name_or_path={base}", *LORA, "validation_steps=null", "lora_target_modules=[nope]"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: `lora_target_modules`: ['nope'] match no") and \
        "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
