"""training/data.py and scripts/make_shapes_dataset.py: every loading path and its errors, the transforms and their
seeded determinism (the shapes dataset itself: tests/test_builtin_shapes.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import SHAPES_CAPTION, data_config
from PIL import Image

from training.builtin.shapes import make_shapes_dataset
from training.data import (
    ImageCaptionDataset,
    _open_image,
    all_captions,
    collate_fn,
    load_train_dataset,
    mix_seed,
    pick_caption,
    sample_generator,
    train_transform,
    write_imagefolder,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("partial_state")
SCRIPT = ROOT / "scripts" / "make_shapes_dataset.py"


# ---- imagefolder (train_data_dir) and the script -----------------------------------------------------------------


def test_script_writes_an_imagefolder_that_train_data_dir_loads(tmp_path):
    folder = tmp_path / "shapes"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output_dir", str(folder), "--num_samples", "12", "--resolution", "32",
         "--seed", "4"], capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [set(line) >= {"file_name", "text"} for line in lines] == [True] * 12
    assert all((folder / line["file_name"]).is_file() for line in lines)

    dataset = load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}"))
    reference = make_shapes_dataset(12, 32, seed=4)
    assert len(dataset) == 12
    for row in dataset:
        index = int(Path(row["image"]["path"]).stem)  # 000007.png is sample 7
        assert row["text"] == reference[index]["text"]
        pixels = np.asarray(Image.open(row["image"]["path"]))
        assert np.array_equal(pixels, np.asarray(reference[index]["image"]))  # PNG round trip is lossless


def load_script():
    spec = importlib.util.spec_from_file_location("make_shapes_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_bad_arguments_exit_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--num_samples", "3"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "the following arguments are required: --output_dir" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_samples", "0", "--resolution", "32"], "--num_samples: 0 must be ≥ 1."),
        (["--num_samples", "2", "--resolution", "4"], "--resolution: 4 must be ≥ 8"),
        (["--num_samples", "two", "--resolution", "32"], "argument --num_samples: invalid int value: 'two'"),
        (["--num_samples", "2", "--resolution", "32", "--seed", "-3"], "--seed: -3 must be ≥ 0."),
    ],
)
def test_script_bad_values_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--output_dir", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr


def test_script_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--output_dir", str(tmp_path), "--num_samples", "2", "--resolution", "16"])
    assert exit_info.value.code == 2 and "exists and is not an empty folder" in capsys.readouterr().err


def make_folder(tmp_path: Path, rows: list[dict], images: dict[str, bytes | None] | None = None) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in (images or {}).items():
        if data is None:
            Image.new("RGB", (16, 16), (10, 200, 30)).save(folder / name)
        else:
            (folder / name).write_bytes(data)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_unreadable_image_stops_naming_the_file(tmp_path):
    rows = [{"file_name": "good.png", "text": "a"}, {"file_name": "bad.png", "text": "b"}]
    folder = make_folder(tmp_path, rows, {"good.png": None, "bad.png": b"this is not a png"})
    with pytest.raises(ValueError, match=r"Cannot read image '.*bad\.png' \(row \d\) .*set on_bad_image=skip"):
        load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}"))


def test_unreadable_image_is_skipped_with_a_counted_warning(tmp_path, caplog):
    rows = [{"file_name": f"{n}.png", "text": n} for n in ("a", "b", "bad", "c")]
    images = {"a.png": None, "b.png": None, "bad.png": b"\x89PNG garbage", "c.png": None}
    folder = make_folder(tmp_path, rows, images)
    with caplog.at_level(logging.WARNING):
        dataset = load_train_dataset(
            data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}", "on_bad_image=skip")
        )
    assert sorted(dataset["text"]) == ["a", "b", "c"]
    assert re.search(r"on_bad_image=skip: skipped 1 of 4 images that cannot be read: '.*bad\.png'", caplog.text)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    # PIL's own conversion of a 16-bit PNG to RGB clips every value above 255, which would make it almost white.
    ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535 in steps of 257
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rows = [{"file_name": "deep.png", "text": "a"}]
    folder = make_folder(tmp_path, rows, {"deep.png": (tmp_path / "deep.png").read_bytes()})
    dataset = load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}"))
    pixels = np.asarray(_open_image(dataset[0]["image"]))
    assert pixels.shape == (16, 16, 3) and (pixels[..., 0] == np.arange(256).reshape(16, 16)).all()


def test_all_images_unreadable_is_an_error(tmp_path):
    folder = make_folder(tmp_path, [{"file_name": "bad.png", "text": "b"}], {"bad.png": b"nope"})
    with pytest.raises(ValueError, match=r"has no readable images \(1 unreadable\)"):
        load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}", "on_bad_image=skip"))


def test_imagefolder_errors(tmp_path):
    def load(folder):
        return load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}"))

    with pytest.raises(FileNotFoundError, match=r"`train_data_dir`: '.*missing' is not a directory"):
        load(tmp_path / "missing")
    (tmp_path / "no-metadata").mkdir()
    with pytest.raises(FileNotFoundError, match=r"`train_data_dir`: '.*no-metadata' has no metadata\.jsonl"):
        load(tmp_path / "no-metadata")
    folder = make_folder(tmp_path, [{"name": "a.png", "text": "a"}], {"a.png": None})
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 1: has no `file_name` key \(keys: \['name', 'text'\]"):
        load(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n{"file_name": "gone.png"}\n')
    with pytest.raises(FileNotFoundError, match=r"metadata\.jsonl, line 2: image 'gone\.png' does not exist"):
        load(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 1: not valid JSON"):
        load(folder)


# ---- saved datasets (dataset_name: a folder) and column handling -------------------------------------------------


def test_saved_dataset_with_custom_columns(tmp_path):
    source = make_shapes_dataset(10, 32, seed=2).rename_columns({"image": "picture", "text": "caption"})
    source.save_to_disk(str(tmp_path / "saved"))
    config = data_config(tmp_path, f"dataset_name={tmp_path / 'saved'}")
    dataset = load_train_dataset(config)  # auto-detects the Image column and "caption"
    assert dataset.column_names == ["image", "text"]
    assert dataset["text"] == source["caption"]

    datasets.DatasetDict({"train": source}).save_to_disk(str(tmp_path / "saved-dict"))
    explicit = data_config(tmp_path, f"dataset_name={tmp_path / 'saved-dict'}", "image_column=picture",
                           "caption_column=color")
    assert load_train_dataset(explicit)["text"] == source["color"]


def test_saved_dataset_dict_without_train_split(tmp_path):
    datasets.DatasetDict({"test": make_shapes_dataset(2, 16, 0)}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"has no 'train' split; its splits are test"):
        load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'd'}"))


def test_missing_path_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`dataset_name`: '.*nowhere' looks like a path but does not exist"):
        load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'nowhere'}"))


@pytest.mark.parametrize(
    "overrides, columns, match",
    [
        (["image_column=photo"], None, r"`image_column`: 'photo' is not a column of the dataset; available columns: "
                                       r"image, text, size, color, shape, background"),
        (["caption_column=prompt"], None, r"`caption_column`: 'prompt' is not a column of the dataset; available"),
        ([], ["image", "size"], r"No caption column found \(tried text, caption, captions, prompt\); set "
                                r"`caption_column`\. The dataset's available columns: image, size"),
        (["image_column=text"], None, r"`image_column`: 'text' has feature Value\('string'\), expected datasets"),
        ([], ["text", "size"], r"No image column found .* available columns: text, size"),
    ],
)
def test_column_errors(tmp_path, overrides, columns, match):
    source = make_shapes_dataset(3, 16, seed=0)
    if columns:
        source = source.select_columns(columns)
    source.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=match):
        load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'saved'}", *overrides))


def test_empty_dataset(tmp_path):
    empty = datasets.Dataset.from_dict(
        {"image": [], "text": []},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    empty.save_to_disk(str(tmp_path / "empty"), num_shards=1)  # datasets 5.2 can't reload its 0-shard default
    with pytest.raises(ValueError, match=r"The dataset from '.*empty' is empty \(0 rows\)"):
        load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'empty'}"))
    folder = make_folder(tmp_path, [])
    with pytest.raises(ValueError, match=r"`train_data_dir`: '.*folder' is empty: its metadata\.jsonl lists no images"):
        load_train_dataset(data_config(tmp_path, "dataset_name=none", f"train_data_dir={folder}"))


def test_caption_lists_and_bad_captions(tmp_path):
    source = make_shapes_dataset(3, 16, seed=0).remove_columns("text")
    listed = source.add_column("text", [["x", "y", "z"], ["only"], ["p", "q"]])
    listed.save_to_disk(str(tmp_path / "listed"))
    dataset = load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'listed'}"))
    assert all_captions(dataset) == ["x", "y", "z", "only", "p", "q"]
    train = ImageCaptionDataset(dataset, 32, center_crop=True, train=True)
    picked = {train_with_epoch(train, epoch)[0]["caption"] for epoch in range(40)}
    assert picked == {"x", "y", "z"}  # random choice in training
    assert ImageCaptionDataset(dataset, 32, train=False)[0]["caption"] == "x"  # the first otherwise

    bad = source.add_column("text", ["fine", None, "fine"])
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"`caption_column`: 'text', row 1: None is not a string or a non-empty list"):
        load_train_dataset(data_config(tmp_path, f"dataset_name={tmp_path / 'bad'}"))


def train_with_epoch(dataset: ImageCaptionDataset, epoch: int) -> ImageCaptionDataset:
    dataset.set_epoch(epoch)
    return dataset


# ---- transforms and determinism ----------------------------------------------------------------------------------


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.arange(width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.arange(height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 255)], -1))


def test_preprocess_range_shape_and_values():
    out = train_transform(Image.new("RGB", (40, 24), (255, 0, 128)), 16, center_crop=True)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.ones(16, 16)) and torch.equal(out[1], -torch.ones(16, 16))
    assert torch.allclose(out[2], torch.full((16, 16), 128 / 127.5 - 1), atol=1e-6)
    gray = train_transform(Image.new("L", (20, 20), 0), 20)  # any mode becomes RGB
    assert gray.shape == (3, 20, 20) and gray.min() == -1


def test_center_crop_takes_the_middle():
    # 48×32 at resolution 32: no resize, crop columns 8..39.
    out = train_transform(gradient_image(48, 32), 32, center_crop=True, interpolation="nearest")
    columns = ((out[0, 0] + 1) * 127.5).round().to(torch.int64)
    assert columns.tolist() == list(range(8, 40))


def test_resize_is_on_the_shorter_side():
    out = train_transform(gradient_image(64, 128), 32, center_crop=True, interpolation="nearest")
    assert out.shape == (3, 32, 32)  # 64×128 → 32×64 → crop rows 16..47 of the resized image
    rows = ((out[1, :, 0] + 1) * 127.5).round().to(torch.int64)
    assert rows.tolist() == list(range(33, 97, 2))  # PIL's nearest samples pixel centres: resized row r ← 2r + 1


def test_random_crop_and_flip_follow_the_generator():
    image = gradient_image(60, 40)
    a = train_transform(image, 40, random_flip=True, generator=torch.Generator().manual_seed(3))
    b = train_transform(image, 40, random_flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    outs = [train_transform(image, 40, random_flip=True, generator=torch.Generator().manual_seed(s))
            for s in range(40)]
    lefts = {int(((o[0, 0].min() + 1) * 127.5).round()) for o in outs}
    assert len(lefts) > 5  # crops move
    flipped = sum(bool(o[0, 0, 0] > o[0, 0, -1]) for o in outs)
    assert 8 < flipped < 32  # about half are flipped


def test_dataset_items_depend_only_on_seed_epoch_index(tmp_path):
    source = make_shapes_dataset(16, 32, seed=0).cast_column("image", datasets.Image(decode=False))
    source = source.select_columns(["image", "text"])
    padded = datasets.Dataset.from_dict(
        {"image": [{"bytes": _pad(c["bytes"]), "path": None} for c in source["image"]], "text": source["text"]},
        features=datasets.Features({"image": datasets.Image(decode=False), "text": datasets.Value("string")}),
    )

    def items(seed, epoch, order):
        dataset = ImageCaptionDataset(padded, 32, random_flip=True, seed=seed)
        dataset.set_epoch(epoch)
        return {i: dataset[i]["pixel_values"] for i in order}

    forward, backward = items(0, 0, range(16)), items(0, 0, reversed(range(16)))
    assert all(torch.equal(forward[i], backward[i]) for i in range(16))  # order-independent (resume, workers)
    assert any(not torch.equal(forward[i], items(0, 1, range(16))[i]) for i in range(16))  # new epoch, new draws
    assert any(not torch.equal(forward[i], items(1, 0, range(16))[i]) for i in range(16))  # new seed, new draws
    assert sample_generator(0, 1, 2).initial_seed() == sample_generator(0, 1, 2).initial_seed()
    assert sample_generator(0, 1, 2).initial_seed() != sample_generator(0, 2, 1).initial_seed()


def _pad(png: bytes) -> bytes:
    """Re-encode a 32px shapes image on a 40×48 canvas, so random crops have room to move."""
    import io

    canvas = Image.new("RGB", (48, 40), (0, 0, 0))
    canvas.paste(Image.open(io.BytesIO(png)), (8, 4))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def test_collate_and_dataloader(tmp_path):
    dataset = load_train_dataset(data_config(tmp_path, "num_shapes_samples=10"))
    torch_dataset = ImageCaptionDataset.from_config(dataset, data_config(tmp_path))
    loader = torch.utils.data.DataLoader(torch_dataset, batch_size=4, collate_fn=collate_fn)
    batch = next(iter(loader))
    assert set(batch) == {"pixel_values", "captions"}
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].is_contiguous()
    assert -1 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
    assert batch["captions"] == dataset["text"][:4] and all(SHAPES_CAPTION.match(c) for c in batch["captions"])


def test_pick_caption():
    assert pick_caption("one") == "one"
    assert pick_caption(["a", "b"]) == "a"
    assert {pick_caption(["a", "b", "c"], torch.Generator().manual_seed(s)) for s in range(30)} == {"a", "b", "c"}


def test_write_imagefolder_keeps_all_columns(tmp_path):
    write_imagefolder(make_shapes_dataset(3, 16, seed=0), tmp_path / "out")
    first = json.loads((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()[0])
    assert list(first) == ["file_name", "text", "size", "color", "shape", "background"]


def test_mix_seed_is_cpythons_tuple_hash_written_out():
    """Per-sample generators (augmentation here, noise and timesteps in training.run) are seeded by `mix_seed`: the
    value `hash(keys) % 2**63` had under CPython ≥ 3.8, written out so that seeds survive a change of Python."""
    import random

    rng = random.Random(0)
    for length in range(1, 6):
        for _ in range(300):
            keys = tuple(rng.choice([rng.randrange(10), rng.randrange(2**20), rng.randrange(2**64)]) for _ in range(length))
            assert mix_seed(*keys) == hash(keys) % 2**63, keys
    assert mix_seed(0, 5, 0, 3) == 3424991955341618337  # pinned: a change here changes every seeded run
    assert mix_seed(0, 1, 2) != mix_seed(0, 2, 1) and mix_seed(1) != mix_seed(1, 0)
    with pytest.raises(ValueError, match=r"`keys`: -1 must be a non-negative integer"):
        mix_seed(0, -1)


def test_imagefolder_by_its_files_equals_by_its_folder(tmp_path):
    """load_imagefolder names the files (fast) and gives what `data_dir` gives; a folder with split subfolders keeps
    its splits (loaded by data_dir)."""
    import datasets

    from training.data import load_imagefolder

    folder = tmp_path / "images"
    write_imagefolder(make_shapes_dataset(6, 16, seed=2), folder / "nested")
    (folder / ".hidden.png").write_bytes(b"not an image")
    fast = load_imagefolder(folder, str(tmp_path / "c1"))["train"]
    slow = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "c2"))["train"]
    assert fast["text"] == slow["text"] and len(fast) == 6
    assert [np.asarray(a).tobytes() for a in fast["image"]] == [np.asarray(b).tobytes() for b in slow["image"]]
    split = tmp_path / "split"
    write_imagefolder(make_shapes_dataset(3, 16, seed=0), split / "train")
    write_imagefolder(make_shapes_dataset(2, 16, seed=1), split / "test")
    loaded = load_imagefolder(split, str(tmp_path / "c3"))
    assert {name: len(part) for name, part in loaded.items()} == {"train": 3, "test": 2}


@pytest.mark.parametrize("center_crop", [True, False])
def test_caption_only_samples_carry_the_full_samples_captions(tmp_path, center_crop):
    """With cached latents the loader decodes no image (`pixels=False`); each sample's caption, and so every draw of
    its generator after it, is the one the full sample has, for several captions per image too."""
    import datasets

    rows = make_shapes_dataset(8, 32, seed=0).to_dict()
    rows["text"] = [[caption, caption.upper(), "third"] for caption in rows["text"]]
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "text": datasets.Sequence(datasets.Value("string")),
         **{k: datasets.Value("string") for k in ("size", "color", "shape", "background")}})).save_to_disk(str(folder))
    dataset = load_train_dataset(data_config(tmp_path, f"dataset_name={folder}", "resolution=32",
                                             f"center_crop={str(center_crop).lower()}", "random_flip=false"))
    full = ImageCaptionDataset(dataset, 32, center_crop=center_crop, seed=3)
    captions_only = ImageCaptionDataset(dataset, 32, center_crop=center_crop, seed=3, pixels=False)
    for epoch in (0, 1):
        full.set_epoch(epoch), captions_only.set_epoch(epoch)
        for index in range(len(dataset)):
            assert captions_only[index] == {"caption": full[index]["caption"]}
    assert len({full[i]["caption"] for i in range(len(dataset))} - set(rows["text"][0])) > 0
