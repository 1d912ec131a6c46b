"""training/latent_cache.py and scripts/cache_latents.py: real tiny training runs (in-process) on the disk latent
cache. It trains exactly as the memory cache where both apply (no flips), and as the uncached path with flips; it is
reused by a second run and rebuilt under another key; a truncated shard is rebuilt and a damaged one refused; the
script builds the cache a run then reads; every bad input gives its named error."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
from conftest import tiny
from safetensors import safe_open
from safetensors.torch import load_file

from training.config import load_config
from training.errors import CacheDamagedError
from training.latent_cache import MANIFEST, shard_name
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# 16 shapes, 4 steps of 4: one epoch. The text encoder stays frozen so that caption embeddings can be cached too.
RUN = ("num_shapes_samples=16", "max_train_steps=4", "validation_prompts=[]", "use_ema=false", "random_flip=false",
       "train_text_encoder=false")  # fmt: skip
DISK = ("cache_latents=true", "latent_cache=disk")


def run(out: Path, cache: Path, *overrides: str) -> list[float]:
    """Train configs/tiny.yaml with RUN into `out` (datasets' and the latent cache's files under `cache`); the losses."""
    main(tiny(out, f"cache_dir={cache}", *RUN, *overrides))
    return [h["loss"] for h in json.loads((out / "loss_history.json").read_text())]


def unet(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def cache_folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "sculpt-latents").iterdir() if p.is_dir())


def shard_times(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.safetensors"))}


def test_disk_cache_trains_exactly_as_the_memory_cache(tmp_path):
    cache = tmp_path / "hf"
    memory = run(tmp_path / "memory", cache, "cache_latents=true", "cache_text_embeddings=true")
    disk = run(tmp_path / "disk", cache, *DISK, "cache_text_embeddings=true")
    uncached = run(tmp_path / "uncached", cache)
    assert len(memory) == 4 and disk == memory  # the same bits: same batches encoded, same ε drawn from q(z | x)
    a, b = unet(tmp_path / "memory"), unet(tmp_path / "disk")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The uncached path samples z inside the VAE: equal up to float rounding (measured 2.4e-6 over 8 steps).
    assert max(abs(x - y) for x, y in zip(uncached, memory)) < 1e-4, (uncached, memory)
    [folder] = cache_folders(cache)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert (manifest["rows"], manifest["shards"], manifest["text"]) == (16, 1, True)
    assert manifest["key"]["flips"] is False and manifest["key"]["resolution"] == 32
    with safe_open(str(folder / shard_name(0)), framework="pt") as f:
        assert f.get_tensor("mean.0").shape == (16, 4, 16, 16) and "mean_flipped.0" not in f.keys()
        assert f.get_tensor("text.embeddings").shape == (16, 77, 32)


def test_the_cache_is_reused_and_another_key_gets_its_own(tmp_path):
    cache = tmp_path / "hf"
    first = run(tmp_path / "a", cache, *DISK)
    [folder] = cache_folders(cache)
    built = shard_times(folder)
    again = run(tmp_path / "b", cache, *DISK)
    assert again == first and cache_folders(cache) == [folder] and shard_times(folder) == built  # read, not rebuilt
    # Other data (another dataset_seed draws other shapes) is another key: a second folder, other latents.
    other = run(tmp_path / "c", cache, *DISK, "dataset_seed=1")
    folders = cache_folders(cache)
    assert len(folders) == 2 and other != first and shard_times(folder) == built
    keys = [json.loads((f / MANIFEST).read_text())["key"] for f in folders]
    assert keys[0]["data"]["fingerprint"] != keys[1]["data"]["fingerprint"]
    # A VAE initialised from another seed is another key too.
    run(tmp_path / "d", cache, *DISK, "seed=1")
    assert len(cache_folders(cache)) == 3
    # A latent_cache_dir given by hand that holds another key's cache is refused, naming what differs.
    with pytest.raises(ValueError, match=r"`latent_cache_dir`: '.*' holds a cache built with other settings \(data\."):
        run(tmp_path / "e", cache, *DISK, f"latent_cache_dir={folder}", "dataset_seed=1")


def test_random_flip_with_the_disk_cache_trains_as_the_uncached_path(tmp_path):
    from training.data import draw_view, sample_generator
    from training.latent_cache import LatentCache

    cache = tmp_path / "hf"
    # 8 steps: two epochs, so each image is drawn twice, with its own flip each time.
    disk = run(tmp_path / "disk", cache, *DISK, "random_flip=true", "max_train_steps=8")
    uncached = run(tmp_path / "uncached", cache, "random_flip=true", "max_train_steps=8")
    assert max(abs(x - y) for x, y in zip(disk, uncached)) < 1e-4, (disk, uncached)
    [folder] = cache_folders(cache)
    with safe_open(str(folder / shard_name(0)), framework="pt") as f:
        mean, flipped = f.get_tensor("mean.0"), f.get_tensor("mean_flipped.0")
    assert mean.shape == flipped.shape == (16, 4, 16, 16) and not torch.allclose(mean, flipped)
    # Each sample reads the view its generator draws, as train_transform would flip the image.
    config = tiny(tmp_path, f"cache_dir={cache}", *RUN, *DISK, "random_flip=true")
    reader = LatentCache(folder, config)
    draws = []
    for epoch in (0, 1):
        for row in range(16):
            flip = draw_view(sample_generator(config.seed, epoch, row), True, True)[2]
            draws.append(flip)
            assert torch.equal(reader.sample(row, epoch)["latent_mean"], (flipped if flip else mean)[row])
    assert 8 <= sum(draws) <= 24, draws  # both views are used (32 fair draws)


def test_the_script_builds_the_cache_a_run_reads_and_damage_is_found(tmp_path, capsys):
    cache, script = tmp_path / "hf", runpy.run_path(str(ROOT / "scripts" / "cache_latents.py"))["main"]
    settings = ["--config", TINY, f"output_dir={tmp_path / 'script'}", f"cache_dir={cache}", "validation_steps=null", *RUN]
    assert script([*settings, "--rows_per_shard", "4"]) == 0
    [folder] = cache_folders(cache)
    assert f"Latent cache: {folder} (16 rows in 4 shard(s))" in capsys.readouterr().out
    built = shard_times(folder)
    assert len(built) == 4
    reference = run(tmp_path / "own", tmp_path / "other-hf", *DISK)  # built by the run itself, in one shard
    assert run(tmp_path / "a", cache, *DISK) == reference and shard_times(folder) == built

    # A truncated shard (a crash mid-write by something else than sculpt's atomic rename) is rebuilt, the rest kept.
    path = folder / shard_name(2)
    path.write_bytes(path.read_bytes()[:-100])
    assert run(tmp_path / "b", cache, *DISK) == reference
    now = shard_times(folder)
    assert [name for name in built if now[name] != built[name]] == [shard_name(2)]

    # A shard damaged in place (same size, one byte of a latent changed) stops the run at its row, naming it.
    path = folder / shard_name(1)
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    start, end = header["mean.0"]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[8 + header_length + (start + end) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheDamagedError, match=r"row \d of shard-00001\.safetensors does not match its CRC.*"
                                                r"scripts/cache_latents\.py --config <this config> --verify"):
        run(tmp_path / "c", cache, *DISK)
    # --verify finds it by the rows' CRCs and rebuilds it; training reads the rebuilt cache.
    assert script([*settings, "--verify"]) == 0
    assert shard_times(folder)[shard_name(1)] != now[shard_name(1)]
    assert run(tmp_path / "d", cache, *DISK) == reference


def test_the_disk_cache_streams_with_the_data(tmp_path):
    from training.shards import shapes_rows, write_shards

    shards = tmp_path / "shards"
    write_shards(*shapes_rows(16, 32, 0), shards, rows_per_shard=8)
    stream = ("dataset_name=" + str(shards), "streaming=true", "shuffle_buffer_size=8")
    cache = tmp_path / "hf"
    cached = run(tmp_path / "disk", cache, *stream, *DISK)
    uncached = run(tmp_path / "uncached", cache, *stream)
    assert len(cached) == 4 and max(abs(x - y) for x, y in zip(cached, uncached)) < 1e-4, (cached, uncached)
    [folder] = cache_folders(cache)
    key = json.loads((folder / MANIFEST).read_text())["key"]
    assert key["data"]["rows"] == [8, 8] and key["data"]["files"] == ["train-00000-of-00002.parquet",
                                                                       "train-00001-of-00002.parquet"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["latent_cache=ssd"], r"`latent_cache`: 'ssd' is not one of 'memory', 'disk'"),
        (["latent_cache=disk"], r"`latent_cache`: 'disk' is where `cache_latents` keeps its cache; set "
                                r"cache_latents=true, or latent_cache=memory"),
        (["cache_latents=true", "random_flip=true"], r"`random_flip`: true would never flip; set latent_cache=disk"),
        (["dataset_name=", "train_data_dir=data/x", *DISK, "center_crop=false"],
         r"`cache_latents`: true caches one view per image, so the random crop of `center_crop`: false"),
    ],
)
def test_bad_settings_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(TINY, overrides)


def test_the_script_refuses_bad_arguments(tmp_path, capsys):
    script = runpy.run_path(str(ROOT / "scripts" / "cache_latents.py"))["main"]
    with pytest.raises(SystemExit) as exited:
        script(["--config", TINY, "--rows_per_shard", "0"])
    assert exited.value.code == 2 and "--rows_per_shard: 0 must be ≥ 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script(["--config", TINY, "stray"])
    assert "unexpected argument 'stray'; settings are given as key=value" in capsys.readouterr().err
    assert script(["--config", TINY, f"output_dir={tmp_path}", "latent_cache=ssd"]) == 2
    assert "error: `latent_cache`: 'ssd' is not one of 'memory', 'disk'" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("rows_per_shard, shards", [(None, 1), (4, 4)])
def test_two_processes_build_the_cache_one_process_reads(tmp_path, rows_per_shard, shards):
    # One shard: rank 1 builds nothing and could read the manifest rank 0 had just written; it found the shard
    # missing while the barriers paired wrongly (fixed: every rank meets after the manifest, found or written).
    import os
    import subprocess

    from conftest import accelerate_launch

    cache = tmp_path / "hf"
    # The script encodes with this process's thread count, so its latents round as the in-process reference's do.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    command = [*accelerate_launch(2, 29781 + shards), str(ROOT / "scripts" / "cache_latents.py"), "--config", TINY,
               f"output_dir={tmp_path / 'script'}", f"cache_dir={cache}", "validation_steps=null", *RUN,
               *(["--rows_per_shard", str(rows_per_shard)] if rows_per_shard else [])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    [folder] = cache_folders(cache)
    built = shard_times(folder)
    assert len(built) == shards  # shard k built by rank k mod 2
    reference = run(tmp_path / "own", tmp_path / "other-hf", *DISK)
    assert run(tmp_path / "read", cache, *DISK) == reference and shard_times(folder) == built


def test_a_cache_killed_midway_builds_only_what_is_missing(tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "hf"
    command = [sys.executable, str(ROOT / "scripts" / "cache_latents.py"), "--config", TINY,
               f"output_dir={tmp_path / 'script'}", f"cache_dir={cache}", "validation_steps=null", *RUN,
               "--rows_per_shard", "4"]  # fmt: skip
    # The script encodes with this process's thread count, so its latents round as the in-process reference's do.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    # SIGKILL right after shard 1 is written (checkpoint.kill_point): shards 0 and 1 complete, no partial file kept.
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**env, "SCULPT_TEST_KILL_AT": "cache:1"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    [folder] = cache_folders(cache)
    first = shard_times(folder)
    assert list(first) == [shard_name(0), shard_name(1)]
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    now = shard_times(folder)
    assert len(now) == 4 and all(now[name] == first[name] for name in first)  # only shards 2 and 3 were built
    assert run(tmp_path / "a", cache, *DISK) == run(tmp_path / "own", tmp_path / "other-hf", *DISK)
