"""training/buckets.py and its use in training: aspect-ratio bucketing on an imagefolder of mixed sizes (portrait,
landscape, square, huge, an extreme 1:7, and a tiny one that is refused), one bucket per batch, every image once per
epoch but for a counted remainder, exact resume after SIGKILL, a 2-process run equal to one process, latent caching,
and a saved model that samples at two aspect ratios."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, accelerate_launch, data_config
from PIL import Image
from safetensors.torch import load_file

from training.buckets import BucketBatchSampler, assign_buckets, check_buckets, make_buckets, nearest_bucket, parse_size
from training.config import load_config
from training.data import EpochSampler, build_train_dataloader, load_train_dataset, train_transform

pytestmark = pytest.mark.usefixtures("partial_state")

# tiny.yaml: 32 px, VAE factor 2 × UNet downsampling 2 (two blocks) → sides divisible by 4.
TINY_BUCKETS = [(16, 64), (20, 48), (24, 40), (28, 36), (32, 32), (36, 28), (40, 24), (48, 20), (64, 16)]
# (width, height) of the mixed folder, several of each so every used bucket fills a batch of 4.
MIXED = [(42, 80)] * 8 + [(88, 45)] * 8 + [(50, 50)] * 9 + [(1000, 600)] * 4 + [(20, 140)] * 4 + [(31, 57)] * 3
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_mixed_folder(folder: Path, sizes=MIXED) -> Path:
    """An imagefolder of `sizes`, each image a horizontal colour ramp with a caption naming its shape."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for i, (w, h) in enumerate(sizes):
            ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2)
            ramp[..., 1] = (i * 37) % 256
            Image.fromarray(ramp).save(folder / f"{i:03d}.png")
            shape = "portrait" if h > w else "landscape" if w > h else "square"
            metadata.write(json.dumps({"file_name": f"{i:03d}.png", "text": f"a {shape} ramp number {i % 4}"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return write_mixed_folder(tmp_path_factory.mktemp("mixed") / "images")


# ---- the buckets -----------------------------------------------------------------------------------------------------


def test_generated_buckets():
    buckets = make_buckets(32, 4)
    assert buckets == TINY_BUCKETS
    for w, h in buckets:
        assert w % 4 == 0 and h % 4 == 0 and w * h <= 32 * 32 and max(w / h, h / w) <= 4
    assert make_buckets(64, 16) == [(32, 128), (48, 80), (64, 64), (80, 48), (128, 32)]


def test_nearest_bucket_and_minimal_crop():
    assert TINY_BUCKETS[nearest_bucket((42, 80), TINY_BUCKETS)] == (24, 40)  # 0.525 → 0.6, the nearest in log ratio
    assert TINY_BUCKETS[nearest_bucket((88, 45), TINY_BUCKETS)] == (40, 24)
    assert TINY_BUCKETS[nearest_bucket((1000, 600), TINY_BUCKETS)] == (40, 24)
    assert TINY_BUCKETS[nearest_bucket((20, 140), TINY_BUCKETS)] == (16, 64)  # 1:7 → the end bucket, 1:4
    # The image is resized to just cover its bucket and cropped on one axis only: a 42x80 image to 24x40 keeps its
    # whole width (24 px) and loses 45 - 40 = 5 of 45 rows; the 1:7 one keeps 64 of 112 rows (43% cut, documented).
    ramp = Image.fromarray(np.linspace(0, 255, 42, dtype=np.uint8)[None, :, None].repeat(80, 0).repeat(3, 2))
    out = train_transform(ramp, (24, 40), center_crop=True)
    assert out.shape == (3, 40, 24)
    assert out[0, 0, 0] < -0.9 and out[0, 0, -1] > 0.9  # both ends of the width survive: nothing cut sideways


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_size("64", "bucket_sizes"), r"`bucket_sizes`: '64' is not a size; write WIDTHxHEIGHT"),
        (lambda: parse_size("0x32", "bucket_sizes"), r"'0x32' is not a size"),
        (lambda: check_buckets([(30, 32)], 4), r"`bucket_sizes`: 30x32 has a side not divisible by 4"),
        (lambda: check_buckets([(32, 32), (32, 32)], 4), r"32x32 given more than once"),
        (lambda: make_buckets(30, 4), r"`resolution`: 30 must be divisible by 4"),
        (lambda: assign_buckets([(8, 8), (50, 50)], TINY_BUCKETS, 1, ["tiny.png", "ok.png"], False),
         r"1 image\(s\) have fewer pixels than the smallest bucket, 20x48: tiny.png \(8x8\)"),
        (lambda: assign_buckets([(50, 50)] * 4, [(32, 32), (64, 16)], 2, ["a"] * 4, True),
         r"`bucket_sizes`: no image is closest in aspect ratio to 64x16"),
        (lambda: assign_buckets([(50, 50)] * 3, TINY_BUCKETS, 4, ["a"] * 3, False),
         r"`train_batch_size`: no bucket holds a whole global batch of 4"),
    ],
)
def test_bad_buckets_are_named_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_config_checks_bucket_sizes_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"`bucket_sizes`: 30x32 has a side not divisible by 4"):
        load_config(TINY, ["bucket_sizes=[32x32, 30x32]"])
    with pytest.raises(ValueError, match=r"`validation_resolutions`: 33x32 has a side not divisible by 2"):
        load_config(TINY, ["validation_resolutions=[33x32]"])
    with pytest.raises(ValueError, match=r"`bucket_sizes`: 'big' is not a size"):
        load_config(TINY, ["bucket_sizes=big"])


def test_a_bucket_too_small_for_a_batch_joins_its_neighbour():
    sizes = [(50, 50)] * 8 + [(90, 45)] * 2
    assigned = assign_buckets(sizes, TINY_BUCKETS, 4, [str(i) for i in range(10)], explicit=False)
    assert {TINY_BUCKETS[b] for b in assigned} == {(32, 32)}


# ---- batches ---------------------------------------------------------------------------------------------------------


def bucket_loader(folder, *overrides, num_processes=1, shuffle=True):
    config = data_config(folder.parent, "dataset_name=", f"train_data_dir={folder}", "aspect_ratio_buckets=true",
                         *overrides)  # fmt: skip
    dataset = load_train_dataset(config)
    return build_train_dataloader(dataset, config, num_processes=num_processes, multiple=4, shuffle=shuffle)


def test_one_bucket_per_batch_every_image_once_per_epoch_but_a_counted_remainder(mixed):
    loader, sampler = bucket_loader(mixed)
    batch_sampler = loader.batch_sampler
    sizes = loader.dataset.dataset.sizes
    left_out = batch_sampler.left_out_per_epoch()
    assert left_out == sum(n % 4 for n in np.unique([tuple(s) for s in sizes], axis=0, return_counts=True)[1])
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler)
        seen = [i for batch in batches for i in batch]
        assert len(seen) == len(set(seen)) == len(MIXED) - left_out  # each image at most once
        for batch in batches:
            assert len(batch) == 4 and len({sizes[i] for i in batch}) == 1  # one bucket
        orders.append(batches)
        for batch in loader if epoch == 0 else []:
            assert batch["pixel_values"].shape[0] == 4
            assert tuple(batch["pixel_values"].shape[2:]) == tuple(reversed(sizes[batch["indices"][0]]))
    assert orders[0] != orders[1]  # reshuffled every epoch
    sampler.set_epoch(0)
    assert list(batch_sampler) == orders[0]  # and the same again for the same epoch


def test_two_processes_split_one_global_batch_of_one_bucket(mixed):
    """Process r takes every 2nd per-process batch from the r-th (accelerate's BatchSamplerShard): the two halves of
    each global step are one bucket's, and together they are the one-process run's batch of 8."""
    one, _ = bucket_loader(mixed, "train_batch_size=8")
    two, _ = bucket_loader(mixed, "train_batch_size=4", num_processes=2)
    sizes = one.dataset.dataset.sizes
    halves = list(two.batch_sampler)
    pairs = [halves[i] + halves[i + 1] for i in range(0, len(halves), 2)]
    assert pairs == list(one.batch_sampler)
    assert all(len({sizes[i] for i in pair}) == 1 for pair in pairs)


def test_without_shuffling_every_image_is_in_a_batch_of_its_bucket(mixed):
    loader, _ = bucket_loader(mixed, shuffle=False)
    seen = sorted(i for batch in loader.batch_sampler for i in batch)
    assert seen == list(range(len(MIXED)))


def test_a_tiny_image_stops_the_run_naming_it(tmp_path):
    folder = write_mixed_folder(tmp_path / "images", [(50, 50)] * 4 + [(6, 9)])
    with pytest.raises(ValueError, match=r"have fewer pixels than the smallest bucket, 20x48: .*004\.png.* \(6x9\)"):
        bucket_loader(folder)


# ---- training --------------------------------------------------------------------------------------------------------
RUN = ["max_train_steps=8", "checkpointing_steps=3", "validation_steps=null", "num_inference_steps=2",
       "aspect_ratio_buckets=true", "center_crop=false", "random_flip=true", "train_text_encoder=false"]


def train_command(out: Path, folder: Path, *overrides: str) -> list[str]:
    return [str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}", "dataset_name=",
            f"train_data_dir={folder}", *RUN, *overrides]  # fmt: skip


def run(command, kill_at: str = "") -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV, "SCULPT_TEST_KILL_AT": kill_at})  # fmt: skip


def test_bucketed_training_resumes_exactly_after_sigkill_and_samples_two_aspect_ratios(tmp_path, mixed):
    reference = tmp_path / "reference"
    done = run(train_command(reference, mixed, "validation_resolutions=[40x24, 24x40]"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bucketing: each epoch leaves out" in done.stderr
    killed_dir = tmp_path / "killed"
    killed = run(train_command(killed_dir, mixed, "validation_resolutions=[40x24, 24x40]"), kill_at="step:5")
    assert killed.returncode == -signal.SIGKILL
    resumed = run(train_command(killed_dir, mixed, "validation_resolutions=[40x24, 24x40]",
                                "resume_from_checkpoint=latest"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 3" in resumed.stdout
    for name in ("unet/diffusion_pytorch_model.safetensors", "checkpoint-6/model.safetensors"):
        a, b = load_file(reference / name), load_file(killed_dir / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (reference / "loss_history.json").read_text() == (killed_dir / "loss_history.json").read_text()
    # The saved model samples at both aspect ratios (and its square default).
    for name, size in (("samples.png", None), ("samples_40x24.png", (40, 24)), ("samples_24x40.png", (24, 40))):
        assert (reference / name).is_file(), name
    from pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(reference)
    pipe.set_progress_bar_config(disable=True)
    for width, height in ((40, 24), (24, 40)):
        image = pipe("a portrait ramp number 1", width=width, height=height, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
        assert image.size == (width, height)


def test_two_processes_train_the_same_bucketed_model_as_one(tmp_path, mixed):
    """2 gloo processes × batch 2 train what 1 process × batch 4 does: the same loss at every step, and weights equal
    up to the float rounding of the all-reduce (which Adam's normalisation amplifies to ~5e-5 after 4 steps)."""
    one = run(train_command(tmp_path / "one", mixed, "checkpointing_steps=null", "max_train_steps=4"))
    assert one.returncode == 0, one.stderr[-3000:]
    two_command = train_command(tmp_path / "two", mixed, "checkpointing_steps=null", "max_train_steps=4",
                                "train_batch_size=2")  # fmt: skip
    two = subprocess.run([*accelerate_launch(2, port=29583), *two_command], capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ, **ENV})  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "two" / "unet" / "diffusion_pytorch_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-4
    history = [json.loads((tmp_path / run_ / "loss_history.json").read_text()) for run_ in ("one", "two")]
    assert [h["loss"] for h in history[0]] == pytest.approx([h["loss"] for h in history[1]], abs=1e-5)


def test_bucketed_training_with_cached_latents(tmp_path, mixed):
    done = run(train_command(tmp_path / "cached", mixed, "cache_latents=true", "center_crop=true", "random_flip=false",
                             "max_train_steps=3", "checkpointing_steps=null"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "cached" / "loss_history.json").read_text())) == 3


def test_epoch_sampler_is_what_orders_the_buckets(mixed):
    loader, sampler = bucket_loader(mixed)
    assert isinstance(loader.batch_sampler, BucketBatchSampler) and loader.batch_sampler.sampler is sampler
    assert isinstance(sampler, EpochSampler)
