"""training/builtin/digits.py: scikit-learn's real handwritten digits as an imagefolder, its held-out split, and the
cache folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.builtin.cache import dataset_fingerprint

if importlib.util.find_spec("sklearn") is None:
    pytest.skip("scikit-learn is not installed: pip install 'sculpt[digits]'", allow_module_level=True)

from training.builtin import digits  # noqa: E402
from training.builtin.digits import build_digits_dataset, digits_dataset_dir, split_indices  # noqa: E402


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    return build_digits_dataset(tmp_path_factory.mktemp("digits") / "test", resolution=16, split="test", progress=False)


def test_the_digits_and_a_stratified_deterministic_split():
    images, labels = digits.load_digits_arrays()
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 16
    train, test = split_indices(labels, "train"), split_indices(labels, "test")
    assert len(train) == 1497 and len(test) == 300 and not set(train) & set(test)
    assert sorted(set(train) | set(test)) == list(range(1797))
    assert np.bincount(labels[test]).tolist() == [30] * 10  # stratified
    assert np.array_equal(split_indices(labels, "test"), test)  # deterministic
    other = split_indices(labels, "test", seed=1)
    assert len(other) == 300 and not np.array_equal(other, test)
    # Each class's draw depends on its own generator only: more held out keeps the first 30 of each class.
    assert set(test) <= set(split_indices(labels, "test", test_per_class=40))


def test_captions():
    assert [digits.digit_caption(label) for label in (0, 7, 9)] == [
        "a handwritten digit zero", "a handwritten digit seven", "a handwritten digit nine"]  # fmt: skip


def test_build_writes_an_imagefolder_that_datasets_reads(test_split, tmp_path):
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(test_split), cache_dir=str(tmp_path / "hf"))["train"]
    images, labels = digits.load_digits_arrays()
    rows = split_indices(labels, "test")
    assert len(loaded) == 300
    assert loaded["label"] == labels[rows].tolist() and loaded["index"] == rows.tolist()
    assert loaded["text"] == [f"a handwritten digit {digits.DIGIT_NAMES[label]}" for label in labels[rows]]
    assert set(loaded["split"]) == {"test"}
    first = loaded[0]["image"]
    assert first.size == (16, 16) and first.mode == "L"
    # White ink on black, and averaging 2x2 blocks gives back the 8x8 digit to within a grey level or so of 16.
    pixels = np.asarray(first, dtype=float)
    assert pixels[0, 0] < 10 and pixels.max() > 200
    back = pixels.reshape(8, 2, 8, 2).mean(axis=(1, 3)) * 16 / 255
    assert np.abs(back - images[rows[0]]).mean() < 1.0
    readme = (test_split / "README.md").read_text()
    assert "| seven | 30 |" in readme and "BSD-3-Clause" in readme and "CC BY 4.0" in readme


def test_train_split_and_resolutions(tmp_path):
    folder = build_digits_dataset(tmp_path / "train", resolution=32, progress=False)
    rows = rows_of(folder)
    assert len(rows) == 1497 and {r["split"] for r in rows} == {"train"}
    assert Image.open(folder / rows[0]["file_name"]).size == (32, 32)
    record = json.loads((folder / "build.json").read_text())
    assert (record["dataset"], record["resolution"], record["split"], record["test_per_class"]) == ("digits", 32, "train", 30)


def test_same_options_same_bytes(test_split, tmp_path):
    again = build_digits_dataset(tmp_path / "again", resolution=16, split="test", progress=False)
    assert dataset_fingerprint(again) == dataset_fingerprint(test_split)


def test_dataset_dir_builds_once(tmp_path):
    first = digits_dataset_dir(tmp_path, resolution=16, split="test", progress=False)
    assert first.name.startswith("digits-test-16px-") and len(rows_of(first)) == 300
    stamp = (first / "metadata.jsonl").stat().st_mtime_ns
    assert digits_dataset_dir(tmp_path, resolution=16, split="test", progress=False) == first
    assert (first / "metadata.jsonl").stat().st_mtime_ns == stamp
    assert digits_dataset_dir(tmp_path, resolution=16, split="test", seed=1, progress=False) != first


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resolution": 20}, r"`resolution`: 20 is not one of \[8, 16, 32, 64\]"),
        ({"split": "validation"}, r"`split`: 'validation' is not one of \['train', 'test'\]"),
        ({"test_per_class": 0}, r"`test_per_class`: 0 must be an integer from 1 to 87"),
        ({"test_per_class": 100}, r"`test_per_class`: 100 must be an integer from 1 to 87"),
        ({"seed": -1}, r"`seed`: -1 must be an integer ≥ 0"),
    ],
)
def test_bad_arguments(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        build_digits_dataset(tmp_path / "out", **options, progress=False)
    with pytest.raises(ValueError, match=message):
        digits_dataset_dir(tmp_path / "cache", **options, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_non_empty_output_dir_is_refused(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="`output_dir`: .* exists and is not an empty folder"):
        build_digits_dataset(tmp_path, progress=False)


def test_missing_scikit_learn_names_the_extra(tmp_path, monkeypatch):
    for module in [name for name in sys.modules if name == "sklearn" or name.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what `import` meets when the package is not installed
    with pytest.raises(ImportError, match=r"pip install 'sculpt\[digits\]'"):
        build_digits_dataset(tmp_path / "out", progress=False)
    with pytest.raises(ImportError, match=r"pip install 'sculpt\[digits\]'"):
        digits.load_digits_arrays()
