"""training/streaming.py, training/shards.py and scripts/make_shards.py: parquet shards written and read back, the
seeded order of an epoch, the split across processes, exact resume without replaying the epoch, data loader
workers, every bad input, and real training runs on a stream (in-process; two processes killed and resumed: slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from conftest import accelerate_launch, data_config, tiny
from safetensors.torch import load_file

from training.builtin.shapes import make_shapes_dataset
from training.checkpoint import list_checkpoints
from training.data import ImageCaptionDataset, write_imagefolder
from training.shards import imagefolder_rows, parse_size, shapes_rows, write_shards
from training.streaming import Stream, StreamLoader, load_stream
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "SCULPT_TEST_KILL_AT": ""}

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "partial_state")


def shapes_shards(folder: Path, count: int = 40, rows_per_shard: int = 16, **kwargs) -> Path:
    write_shards(*shapes_rows(count, 32, 0), folder, rows_per_shard=rows_per_shard, **kwargs)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 shapes in shards of 16, 16 and 8 rows."""
    return shapes_shards(tmp_path_factory.mktemp("shards"))


def stream_config(tmp_path: Path, folder: Path, *overrides: str):
    return data_config(tmp_path, f"dataset_name={folder}", "streaming=true", "shuffle_buffer_size=12",
                       "train_batch_size=4", *overrides)  # fmt: skip


def epoch(loader: StreamLoader, number: int, first: int = 0) -> list[list[int]]:
    loader.set_epoch(number)
    return [batch["indices"] for batch in loader.starting_at(first)]


# ---- shards -----------------------------------------------------------------------------------------------------------


def test_shards_hold_the_imagefolders_bytes_and_captions_and_datasets_reads_them(tmp_path):
    source = write_imagefolder(make_shapes_dataset(10, 32, 3), tmp_path / "images")
    paths = write_shards(*imagefolder_rows(source), tmp_path / "shards", rows_per_shard=4)
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in paths] == [4, 4, 2]
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "shards"), split="train",
                                   cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert isinstance(loaded.features["image"], datasets.Image)
    lines = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines()]
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    for line, row in zip(lines, raw):
        assert row["image"]["bytes"] == (source / line["file_name"]).read_bytes()  # not re-encoded
        assert row["text"] == line["text"] and row["shape"] == line["shape"]
    # The same source and arguments give the same bytes; a shuffle seed permutes the rows (every row once).
    again = write_shards(*imagefolder_rows(source), tmp_path / "again", rows_per_shard=4)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    shuffled = write_shards(*imagefolder_rows(source), tmp_path / "shuffled", rows_per_shard=4, shuffle_seed=1)
    texts = [t for p in shuffled for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]
    assert texts != [line["text"] for line in lines] and sorted(texts) == sorted(line["text"] for line in lines)


def test_shards_by_size_and_the_script(tmp_path):
    paths = write_shards(*shapes_rows(30, 32, 0), tmp_path / "by-size", max_shard_size=parse_size("2KB"))
    sizes = [pq.read_metadata(p).num_rows for p in paths]
    assert len(paths) > 2 and sum(sizes) == 30
    assert parse_size("64MB") == 64 * 2**20 and parse_size("1.5KB") == 1536 and parse_size("100") == 100
    with pytest.raises(ValueError, match=r"`max_shard_size`: '12 apples' is not a size"):
        parse_size("12 apples")
    with pytest.raises(ValueError, match=r"exactly one of `rows_per_shard` and `max_shard_size`"):
        write_shards(*shapes_rows(3, 32, 0), tmp_path / "x")
    script = [sys.executable, str(ROOT / "scripts" / "make_shards.py")]
    done = subprocess.run([*script, "shapes", str(tmp_path / "cli"), "--num_samples", "12", "--rows_per_shard", "5"],
                          capture_output=True, text=True, env=ENV)  # fmt: skip
    assert done.returncode == 0 and "Wrote 12 rows in 3 shard(s)" in done.stdout, done.stderr
    bad = subprocess.run([*script, "no-such-folder", str(tmp_path / "y"), "--rows_per_shard", "5"],
                         capture_output=True, text=True, env=ENV)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "make_shards.py: error: source: 'no-such-folder' is neither a folder nor one of shapes, emoji, digits."]
    full = subprocess.run([*script, "shapes", str(tmp_path / "cli"), "--rows_per_shard", "5"], capture_output=True,
                          text=True, env=ENV)  # fmt: skip
    assert full.returncode == 2 and "exists and is not an empty folder" in full.stderr


# ---- the order of an epoch -------------------------------------------------------------------------------------------


def test_a_stream_counts_its_shards_and_reads_only_its_caption_column_for_captions(tmp_path, shards):
    stream = load_stream(stream_config(tmp_path, shards))
    assert stream.files == [f"train-0000{i}-of-00003.parquet" for i in range(3)] and stream.rows == [16, 16, 8]
    assert len(stream) == 40 and stream["text"] == make_shapes_dataset(40, 32, 0)["text"]
    assert stream.where(17) == "shard 'train-00001-of-00003.parquet', row 1"


def test_each_epoch_is_a_seeded_order_of_every_row_once(tmp_path, shards):
    stream = load_stream(stream_config(tmp_path, shards))
    loader = StreamLoader(stream, stream_config(tmp_path, shards), batch_size=8)
    first, second = epoch(loader, 0), epoch(loader, 1)
    assert len(loader) == 5 and sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(40))
    assert first != second and epoch(loader, 0) == first  # another order per epoch, the same on every run
    other_seed = StreamLoader(stream, stream_config(tmp_path, shards, "seed=1"), batch_size=8)
    assert epoch(other_seed, 0) != first
    # A window shuffle: a row moves at most a window (12 rows) from its place in the epoch's shard order.
    order, starts = loader.sequence(0)
    places = {row: place for place, row in enumerate(sum(first, []))}
    sequence = [stream.offsets[shard] + r for shard in order for r in range(stream.rows[shard])]
    assert all(abs(places[row] - at) < 12 for at, row in enumerate(sequence))
    # The batch itself: the transform of data.py with each row's own generator (seed, epoch, source row).
    batch = next(loader.starting_at(2))
    reference = ImageCaptionDataset(make_shapes_dataset(40, 32, 0).cast_column("image", datasets.Image(decode=False)),
                                    32, center_crop=True, random_flip=True)  # fmt: skip
    reference.set_epoch(0)
    for row, pixels, caption in zip(batch["indices"], batch["pixel_values"], batch["captions"]):
        assert torch.equal(pixels, reference[row]["pixel_values"]) and caption == reference[row]["caption"]


def test_two_processes_take_what_one_process_with_the_combined_batch_takes(tmp_path, shards):
    """3 shards do not divide by 2: one global order, split by batches (rank r takes the r-th of every 2)."""
    stream = load_stream(stream_config(tmp_path, shards))
    config = stream_config(tmp_path, shards)
    one = StreamLoader(stream, config, batch_size=8)
    ranks = [StreamLoader(stream, config, rank, 2, batch_size=4) for rank in (0, 1)]
    assert not ranks[0].by_shards and len(ranks[0]) == len(ranks[1]) == len(one) == 5
    for number in (0, 3):
        per_rank = [epoch(loader, number) for loader in ranks]
        assert [a + b for a, b in zip(*per_rank)] == epoch(one, number)


def test_shards_that_divide_are_split_between_the_ranks(tmp_path):
    folder = shapes_shards(tmp_path / "four", count=48, rows_per_shard=12)
    config = stream_config(tmp_path, folder)
    stream = load_stream(config)
    ranks = [StreamLoader(stream, config, rank, 2, batch_size=4) for rank in (0, 1)]
    assert ranks[0].by_shards and len(ranks[0]) == 6
    rows = [set(sum(epoch(loader, 0), [])) for loader in ranks]
    assert rows == [set(range(24)), set(range(24, 48))]  # shards 0-1 and 2-3: each rank reads only its own


def test_any_batch_of_an_epoch_is_reached_without_reading_the_windows_before_it(tmp_path, shards, monkeypatch):
    """What a resumed run does: batch j onwards of the epoch, computed from the shards' row counts; the reader starts
    at the window holding batch j's first row (rows before it in that shard are skipped undecoded)."""
    config = stream_config(tmp_path, shards)
    stream = load_stream(config)
    for rank, processes in ((0, 1), (1, 2)):
        loader = StreamLoader(stream, config, rank, processes, batch_size=8 // processes)
        whole = epoch(loader, 2)
        for first in range(len(whole)):
            assert epoch(loader, 2, first) == whole[first:], (rank, first)
    read = []
    original = Stream.read

    def counting(self, index, start=0):
        for row in original(self, index, start):
            read.append((index, start))
            yield row

    monkeypatch.setattr(Stream, "read", counting)
    loader = StreamLoader(stream, config, batch_size=8)
    epoch(loader, 2, 4)  # the last batch: rows 32..39 of the shuffled sequence, in its window 24..35 and 36..39
    assert len(read) == 40 - 24


def test_data_loader_workers_give_the_same_batches_in_the_same_order(tmp_path, shards):
    stream = load_stream(stream_config(tmp_path, shards))
    single = StreamLoader(stream, stream_config(tmp_path, shards), batch_size=4)
    workers = StreamLoader(stream, stream_config(tmp_path, shards, "dataloader_num_workers=2"), batch_size=4)
    workers.set_epoch(1)
    single.set_epoch(1)
    for a, b in zip(workers.starting_at(3), single.starting_at(3)):
        assert a["indices"] == b["indices"] and torch.equal(a["pixel_values"], b["pixel_values"])


def test_an_imagefolder_streams_too(tmp_path):
    folder = write_imagefolder(make_shapes_dataset(12, 32, 0), tmp_path / "images")
    config = data_config(tmp_path, "dataset_name=", f"train_data_dir={folder}", "streaming=true", "train_batch_size=4")
    stream = load_stream(config)
    assert stream.files == ["metadata.jsonl"] and stream.rows == [12]
    assert sorted(sum(epoch(StreamLoader(stream, config), 0), [])) == list(range(12))


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_a_shard_without_the_caption_column_is_named_before_training(tmp_path, shards):
    folder = tmp_path / "broken"
    shutil.copytree(shards, folder)
    table = pq.read_table(folder / "train-00002-of-00003.parquet")
    pq.write_table(table.drop_columns(["text"]), folder / "train-00002-of-00003.parquet")
    with pytest.raises(ValueError, match=r"shard 'train-00002-of-00003.parquet' has no column 'text' \(its columns: "
                                         r"image, size, color, shape, background\)"):  # fmt: skip
        load_stream(stream_config(tmp_path, folder))


def test_an_unreadable_image_is_named_with_its_shard_and_row(tmp_path):
    def row(index: int) -> dict:
        cell = good(index)
        if index == 21:
            cell["image"] = {"bytes": b"\x89PNG not really", "path": "broken.png"}
        return cell

    _, good = shapes_rows(24, 32, 0)
    folder = tmp_path / "bad-image"
    write_shards(24, row, folder, rows_per_shard=16)
    config = stream_config(tmp_path, folder, "shuffle_buffer_size=1")  # no shuffle: row 21 is in batch 5
    loader = StreamLoader(load_stream(config), config)
    with pytest.raises(ValueError, match=r"Cannot read the image of shard 'train-00001-of-00002.parquet', row 5 from "
                                         r"`dataset_name`: .*bad-image'"):  # fmt: skip
        epoch(loader, 0)


@pytest.mark.parametrize("overrides, match", [
    (["dataset_name=shapes"], r"`streaming`: true reads shards, .*python scripts/make_shards.py shapes DIR"),
    (["aspect_ratio_buckets=true"], r"`streaming`: true cannot be combined with aspect-ratio bucketing"),
    (["on_bad_image=skip"], r"`on_bad_image`: 'skip' needs a pass over every image before training"),
    (["max_train_samples=8"], r"`max_train_samples`: 8 picks a random subset"),
    (["cache_latents=true", "random_flip=false"], r"`latent_cache`: 'memory' holds the whole dataset's latents"),
    (["shuffle_buffer_size=0"], r"`shuffle_buffer_size`: 0 must be ≥ 1"),
])  # fmt: skip
def test_settings_streaming_cannot_honour_are_refused(tmp_path, shards, overrides, match):
    with pytest.raises(ValueError, match=match):
        stream_config(tmp_path, shards, *overrides)


def test_bad_sources_are_named(tmp_path):
    mixed = tmp_path / "mixed"
    shapes_shards(mixed, count=4)
    (mixed / "extra.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a folder must hold shards of one format .*; it holds 1 \.parquet, 1 \.tar"):
        load_stream(stream_config(tmp_path, mixed))
    with pytest.raises(FileNotFoundError, match=r"`dataset_name`: './nowhere' looks like a path but does not exist"):
        load_stream(stream_config(tmp_path, "./nowhere"))
    tiny_folder = shapes_shards(tmp_path / "tiny", count=6)
    config = stream_config(tmp_path, tiny_folder)
    with pytest.raises(ValueError, match=r"`train_batch_size`: 4 × 2 process\(es\) × 1 accumulation is larger"):
        StreamLoader(load_stream(config), config, 0, 2)


# ---- training on a stream --------------------------------------------------------------------------------------------
RUN = ["max_train_steps=12", "checkpointing_steps=7", "validation_prompts=[]", "shuffle_buffer_size=12"]


def test_a_resumed_streaming_run_matches_the_uninterrupted_one_bit_for_bit(tmp_path, shards, monkeypatch):
    """10 batches per epoch: the checkpoint at 7 is mid-epoch, mid-window, and the run crosses into epoch 1."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(tiny(full, f"dataset_name={shards}", "streaming=true", *RUN))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-7", resumed / "checkpoint-7")
    rows = []
    original = Stream.read
    monkeypatch.setattr(Stream, "read", lambda self, index, start=0: (rows.append(1) or row
                                                                      for row in original(self, index, start)))
    main(tiny(resumed, f"dataset_name={shards}", "streaming=true", *RUN, "resume_from_checkpoint=latest"))
    # Steps 8-10 are rows 28-39 of epoch 0, in the windows from 24 on, and steps 11-12 rows 0-7 of epoch 1.
    assert len(rows) == (40 - 24) + 12
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):  # EMA; trained
        a, b = load_file(full / name), load_file(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (full / "loss_history.json").read_text() == (resumed / "loss_history.json").read_text()
    assert json.loads((full / "checkpoint-7" / "trainer_state.json").read_text())["data"]["rows"] == [16, 16, 8]


def test_a_resume_on_other_shards_is_refused(tmp_path):
    # The same `dataset_name` folder, rewritten with other shards: the settings match (another `dataset_name` is
    # refused earlier, by checkpoint.check_resumable), the streamed data does not.
    folder, out = shapes_shards(tmp_path / "shards"), tmp_path / "run"
    main(tiny(out, f"dataset_name={folder}", "streaming=true", "max_train_steps=2", "checkpointing_steps=2",
              "validation_prompts=[]"))  # fmt: skip
    shutil.rmtree(folder)
    write_shards(*shapes_rows(40, 32, 0), folder, rows_per_shard=20)
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: the checkpoint was written while streaming other "
                                         r"data \(files, rows differ"):  # fmt: skip
        main(tiny(out, f"dataset_name={folder}", "streaming=true", "max_train_steps=3", "validation_prompts=[]",
                  "resume_from_checkpoint=latest"))  # fmt: skip


def test_the_vae_stage_streams_too(tmp_path, shards):
    from training.train_vae import main as train_vae

    config = tiny(tmp_path, f"dataset_name={shards}", "streaming=true", f"vae_output_dir={tmp_path / 'vae'}",
                  "vae_max_train_steps=3")  # fmt: skip
    train_vae(config)
    metrics = json.loads((tmp_path / "vae" / "vae_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["scaling_factor"] > 0


# ---- two processes, killed and resumed (slow) --------------------------------------------------------------------------


def launch_two(out: Path, shards: Path, *overrides: str, port: int, kill_at: str = "") -> subprocess.CompletedProcess:
    command = [*accelerate_launch(2, port), str(ROOT / "scripts" / "train.py"), "--config", TINY,
               f"output_dir={out}", f"dataset_name={shards}", "streaming=true", "train_batch_size=2", *RUN, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**ENV, "SCULPT_TEST_KILL_AT": kill_at})  # fmt: skip


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_to_the_uninterrupted_result(tmp_path, shards):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = launch_two(reference, shards, port=29651)
    assert done.returncode == 0, done.stderr[-3000:]
    dead = launch_two(killed, shards, port=29652, kill_at="step:9@1")
    assert dead.returncode != 0 and [p.name for p in list_checkpoints(killed)] == ["checkpoint-7"]
    resumed = launch_two(killed, shards, "resume_from_checkpoint=latest", port=29653)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (reference / "loss_history.json").read_text() == (killed / "loss_history.json").read_text()

