"""The built-in handwritten-digits dataset: the 1,797 real 8x8 digits scikit-learn ships, as an imagefolder.

Source: `sklearn.datasets.load_digits` (read from the CSV inside the scikit-learn package, no network), a copy of the
test set of UCI's "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak 1998, 13 writers): 32x32 binary
bitmaps of digits written on forms, cut into 4x4 blocks whose "on" pixels were counted, so each of the 8x8 pixels is
an integer 0..16, the ink coverage of its block.

Images: white ink on black, as MNIST in the course material (value v → grey 255·v/16), upsampled from 8x8 to
`resolution` with a bicubic filter (Keys, a = -0.5, Pillow's), clipped to 0..255. Bicubic gives smooth strokes like
MNIST's antialiased ones; nearest would give 4x4 squares whose sharp edges carry no information but which the VAE
and UNet would spend capacity on. It changes the data little: averaged back over 8x8 blocks (what `training.judges.digits`
does to classify), the held-out digits are classified right as often as the original 8x8 arrays: 0.987 at 16 and at
32 px and at 8x8 (`training.judges.digits.check_classifier`).

Captions are exactly "a handwritten digit {zero|one|...|nine}"; the label is kept as a column.

Split: `test_per_class` digits of each class (30: 300 of 1,797) are held out for judging, drawn per class from a
generator seeded (seed, class), so the split is stratified, deterministic, and the same at every resolution. The rows
come from 13 writers and the split does not separate writers (the data does not say who wrote what), so held-out
accuracy is on new digits by familiar hands.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .cache import BUILD_RECORD, build_record_json, cached_build

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATE = "a handwritten digit {name}"
SPLITS = ("train", "test")
MAX_VALUE = 16  # each 8x8 pixel counts the "on" pixels of a 4x4 block
RESOLUTIONS = (8, 16, 32, 64)  # multiples of 8: the judge averages whole blocks back to 8x8
TEST_PER_CLASS = 30
FORMAT_VERSION = 1
INSTALL_DIGITS = "pip install 'sculpt[digits]'"
DIGITS_LICENSE = (
    "Handwritten digits from the UCI Machine Learning Repository's \"Optical Recognition of Handwritten Digits\" "
    "(E. Alpaydin, C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80; CC BY 4.0), as shipped by scikit-learn "
    "(`sklearn.datasets.load_digits`, BSD-3-Clause). Adapted: upsampled from 8x8 to the stated resolution."
)


def digit_caption(label: int) -> str:
    """ "a handwritten digit seven" for 7."""
    return CAPTION_TEMPLATE.format(name=DIGIT_NAMES[label])


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64), in scikit-learn's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(f"The digits dataset needs scikit-learn: {INSTALL_DIGITS}") from None
    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int64)


def _check_split_options(split: str, test_per_class: int, seed: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split`: {split!r} is not one of {list(SPLITS)}.")
    # The smallest class (eight) has 174 digits; keep at least half of each class for training.
    if not isinstance(test_per_class, int) or isinstance(test_per_class, bool) or not 1 <= test_per_class <= 87:
        raise ValueError(f"`test_per_class`: {test_per_class!r} must be an integer from 1 to 87.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed`: {seed!r} must be an integer ≥ 0.")


def split_indices(
    labels: np.ndarray, split: str = "train", test_per_class: int = TEST_PER_CLASS, seed: int = 0
) -> np.ndarray:
    """Sorted row indices of `split`: "test" holds `test_per_class` rows of each class, drawn from a generator
    seeded (seed, class); "train" holds all the others."""
    _check_split_options(split, test_per_class, seed)
    test = np.concatenate([
        np.random.default_rng([seed, label]).permutation(np.flatnonzero(labels == label))[:test_per_class]
        for label in range(len(DIGIT_NAMES))
    ])  # fmt: skip
    if split == "test":
        return np.sort(test)
    return np.setdiff1d(np.arange(len(labels)), test)


def digit_image(pixels: np.ndarray, resolution: int) -> Image.Image:
    """An 8x8 array in 0..16 → a grayscale PIL image of `resolution` px, white ink on black (see the module
    docstring for the filter)."""
    grey = Image.fromarray(np.round(np.asarray(pixels, dtype=np.float64) * 255 / MAX_VALUE).astype(np.uint8), "L")
    if resolution == grey.width:
        return grey
    return grey.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)


def _check_options(resolution, split, test_per_class, seed) -> dict[str, Any]:
    if resolution not in RESOLUTIONS or isinstance(resolution, bool):
        raise ValueError(f"`resolution`: {resolution!r} is not one of {list(RESOLUTIONS)}.")
    _check_split_options(split, test_per_class, seed)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError(f"The digits dataset needs scikit-learn: {INSTALL_DIGITS}") from None
    return {
        "dataset": "digits",
        "format_version": FORMAT_VERSION,
        "resolution": resolution,
        "split": split,
        "test_per_class": test_per_class,
        "seed": seed,
        "sources": {"scikit-learn": importlib_metadata.version("scikit-learn"), "pillow": importlib_metadata.version("pillow")},
    }


def build_digits_dataset(
    output_dir: str | Path,
    resolution: int = 32,
    split: str = "train",
    test_per_class: int = TEST_PER_CLASS,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write one split of the digits dataset into `output_dir` (new or empty) as an imagefolder; return its path.

    Args:
        resolution: image side in pixels, one of RESOLUTIONS (16 or 32 are the useful ones).
        split: "train" (1,497 digits with the defaults) or "test" (the 300 held out for judging).
        test_per_class: held-out digits per class.
        seed: which digits are held out.
        progress: show a tqdm bar.

    Writes `<row>.png` (grayscale; the row of `load_digits`), metadata.jsonl (file_name, text, label, name, index,
    split), README.md with the licence, and build.json (options and sources).
    """
    from tqdm.auto import tqdm

    record = _check_options(resolution, split, test_per_class, seed)
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"`output_dir`: {str(output_dir)!r} exists and is not an empty folder.")
    images, labels = load_digits_arrays()
    rows = split_indices(labels, split, test_per_class, seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index in tqdm(rows.tolist(), unit="digit", desc=f"digits ({split})", disable=not progress):
            label = int(labels[index])
            file_name = f"{index:04d}.png"
            digit_image(images[index], resolution).save(output_dir / file_name, format="PNG")
            row = {"file_name": file_name, "text": digit_caption(label), "label": label, "name": DIGIT_NAMES[label],
                   "index": index, "split": split}  # fmt: skip
            metadata.write(json.dumps(row) + "\n")
    counts = np.bincount(labels[rows], minlength=len(DIGIT_NAMES))
    table = "\n".join(f"| {name} | {count} |" for name, count in zip(DIGIT_NAMES, counts))
    (output_dir / "README.md").write_text(
        f"# Handwritten digits, {split} split, {resolution} px\n\n{len(rows)} digits, white ink on black, captioned "
        f'"a handwritten digit <name>", built by sculpt (`training/builtin/digits.py`); build.json holds the options.'
        f"\n\n| digit | images |\n| --- | ---: |\n{table}\n\n## Licence\n\n{DIGITS_LICENSE}\n",
        encoding="utf-8",
    )
    (output_dir / BUILD_RECORD).write_text(build_record_json(record), encoding="utf-8")
    return output_dir


def digits_dataset_dir(
    cache_dir: str | Path,
    resolution: int = 32,
    split: str = "train",
    test_per_class: int = TEST_PER_CLASS,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """One split of the digits dataset, built into `cache_dir` on the first call (into a temporary folder, then
    renamed) and found there on later calls with the same options."""
    record = _check_options(resolution, split, test_per_class, seed)
    return cached_build(
        cache_dir, f"digits-{split}-{resolution}px", record,
        lambda folder: build_digits_dataset(folder, resolution, split, test_per_class, seed, progress),
    )  # fmt: skip
