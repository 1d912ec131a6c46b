"""Training data, from a source to a batch: loading any image/caption dataset with `datasets` (or a built-in one,
training/builtin/), checking it, the transform, the torch dataset, the epoch sampler and the data loader that feed
both training stages (which tokenize; nothing here does).

Sources (exactly one, see `TrainConfig`): `dataset_name: shapes` (a built-in dataset), a Hub dataset id, a folder
written by `datasets.save_to_disk`, or `train_data_dir`, an imagefolder whose `metadata.jsonl` lines hold `file_name`
and the caption (the diffusers convention).

Determinism: every random choice for a sample (crop offset, flip, which of several captions) comes from its own
`torch.Generator` seeded from (seed, epoch, index), see `sample_generator`. So a sample's augmentation doesn't depend on
shuffling, batch size, the number of dataloader workers or processes, or on how many batches a resumed run skipped.
The training loop seeds its per-sample noise the same way (`training.run.sample_generators`): both through
`seeded_generator`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger
from PIL import Image, ImageOps

from pipelines.loading import looks_like_path

from .buckets import BucketBatchSampler, assign_buckets, check_buckets, make_buckets, parse_size
from .builtin import builtin_cache_dir, builtin_dataset_dir
from .builtin.shapes import shapes_dataset_dir
from .config import BUILTIN_DATASETS, IMAGE_INTERPOLATION_MODES, TrainConfig

logger = get_logger(__name__)

IMAGE_COLUMN, CAPTION_COLUMN = "image", "text"  # what `load_train_dataset` renames the chosen columns to
CAPTION_COLUMN_CANDIDATES = ("text", "caption", "captions", "prompt")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in IMAGE_INTERPOLATION_MODES}


def write_imagefolder(dataset: datasets.Dataset, output_dir: str | Path) -> Path:
    """Write `dataset` as an imagefolder: one PNG per row plus `metadata.jsonl` with `file_name` and every other
    column (`text`, ...). `load_dataset("imagefolder", data_dir=output_dir)` reads it back."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    width = max(6, len(str(len(dataset) - 1)))
    with open(output_dir / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(dataset):
            file_name = f"{index:0{width}d}.png"
            image = open_image(row.pop("image"))
            image.save(output_dir / file_name, format="PNG")
            metadata.write(json.dumps({"file_name": file_name, **row}) + "\n")
    return output_dir


# ---- loading a training dataset --------------------------------------------------------------------------------------


def load_train_dataset(config: TrainConfig) -> datasets.Dataset:
    """The training split as a `datasets.Dataset` with two columns, `image` (undecoded: {"bytes", "path"}) and `text`
    (a caption or a list of captions), checked early: columns exist, rows are present, captions are strings, and
    every image decodes (unreadable ones stop the run or are skipped, per `on_bad_image`).

    Needs an accelerate state (`Accelerator()` or `PartialState()`) for its log messages.
    """
    dataset, source = _load_source(config)
    if config.instance_prompt is not None:  # DreamBooth: one caption for every image; the data's own are ignored
        dataset = dataset.remove_columns([c for c in dataset.column_names if c == CAPTION_COLUMN])
        dataset = dataset.add_column(CAPTION_COLUMN, [config.instance_prompt] * len(dataset))
    image_column, caption_column = resolve_columns(
        dataset, config.image_column, CAPTION_COLUMN if config.instance_prompt is not None else config.caption_column
    )
    if len(dataset) == 0:
        raise ValueError(f"The dataset from {source} is empty (0 rows).")
    if config.max_train_samples is not None and config.max_train_samples < len(dataset):
        dataset = dataset.shuffle(seed=config.dataset_seed).select(range(config.max_train_samples))

    dataset = dataset.select_columns([image_column, caption_column])
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if (image_column, caption_column) != (IMAGE_COLUMN, CAPTION_COLUMN):
        dataset = dataset.rename_columns({image_column: "__image", caption_column: "__text"})
        dataset = dataset.rename_columns({"__image": IMAGE_COLUMN, "__text": CAPTION_COLUMN})
    _check_captions(dataset, caption_column)
    if config.dataset_name not in BUILTIN_DATASETS:  # sculpt wrote the built-in ones: no need to decode them all
        dataset = _check_images(dataset, config.on_bad_image, source)
    logger.info(f"Training data: {len(dataset)} images from {source} (columns {image_column!r}, {caption_column!r})")
    return dataset


def _load_source(config: TrainConfig) -> tuple[datasets.Dataset, str]:
    if config.dataset_name == "shapes":  # drawn once into cache_dir, then loaded by every rank and stage
        colors, backgrounds = config.shapes_colors or None, config.shapes_backgrounds or None
        folder = shapes_dataset_dir(builtin_cache_dir(config), config.num_shapes_samples, config.resolution,
                                    config.dataset_seed, colors, backgrounds)  # fmt: skip
        options = (f", colours {', '.join(colors)}" if colors else "") + (
            f", backgrounds {', '.join(backgrounds)}" if backgrounds else "")
        return datasets.load_from_disk(str(folder)), f"the built-in shapes dataset (seed {config.dataset_seed}{options})"
    if config.dataset_name in BUILTIN_DATASETS:  # built once into cache_dir as an imagefolder
        folder = builtin_dataset_dir(config)
        loaded = load_imagefolder(folder, config.cache_dir)
        return _train_split(loaded, f"`dataset_name`: {config.dataset_name!r}"), (
            f"the built-in {config.dataset_name} dataset ({folder})")
    if config.dataset_name is not None:
        name = config.dataset_name
        path = Path(name).expanduser()
        saved_markers = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
        if path.is_dir() and any((path / marker).is_file() for marker in saved_markers):
            return _train_split(datasets.load_from_disk(str(path)), f"`dataset_name`: {name!r}"), f"{name!r}"
        if looks_like_path(name) and not path.exists():
            raise FileNotFoundError(f"`dataset_name`: {name!r} looks like a path but does not exist.")
        loaded = datasets.load_dataset(name, config.dataset_config_name, cache_dir=config.cache_dir)
        return _train_split(loaded, f"`dataset_name`: {name!r}"), f"{name!r}"
    data_dir = Path(config.train_data_dir)
    check_imagefolder(data_dir, captions=config.instance_prompt is None)
    loaded = load_imagefolder(data_dir, config.cache_dir)
    return _train_split(loaded, f"`train_data_dir`: {str(data_dir)!r}"), f"{str(data_dir)!r}"


# Folder names `datasets` reads as splits of an imagefolder (its data_files patterns: train/, test/, validation/ ...).
_SPLIT_FOLDERS = {"train", "training", "test", "testing", "eval", "evaluation", "validation", "valid", "val", "dev"}


def load_imagefolder(folder: Path, cache_dir: str | None):
    """`load_dataset("imagefolder", ...)` of `folder`, naming its files (`data_files`) rather than the folder: the
    result is the same, but `datasets` then skips its split-pattern search over the tree, which took 2/3 of the
    load (12.3 s → 4.7 s for the 1,644-image emoji folder). A folder with split subfolders (train/, test/, ...) is
    loaded by `data_dir`, as before, so that its splits stay apart."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    folder = Path(folder)
    if any(child.is_dir() and child.name.lower() in _SPLIT_FOLDERS for child in folder.iterdir()):
        return datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=cache_dir)
    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    files = sorted(str(path) for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
                   and (path.suffix.lower() in extensions or path.name == "metadata.jsonl"))  # fmt: skip
    return datasets.load_dataset("imagefolder", data_files={"train": files}, cache_dir=cache_dir)


def _train_split(loaded, what: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if "train" not in loaded:
        raise ValueError(f"{what} has no 'train' split; its splits are {', '.join(loaded)}.")
    return loaded["train"]


def check_imagefolder(data_dir: Path, captions: bool = True) -> None:
    """A clear error for the common imagefolder mistakes, before `datasets` reports them less clearly. Without
    `captions` (an `instance_prompt` captions every image) a plain folder of images will do."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"`train_data_dir`: {str(data_dir)!r} is not a directory.")
    metadata_files = sorted(data_dir.rglob("metadata.jsonl"))
    if not captions and not metadata_files:
        if not any(p.suffix.lower() in _IMAGE_SUFFIXES for p in data_dir.rglob("*")):
            raise ValueError(f"`train_data_dir`: {str(data_dir)!r} holds no images ({', '.join(_IMAGE_SUFFIXES)}).")
        return
    if not metadata_files:
        raise FileNotFoundError(
            f"`train_data_dir`: {str(data_dir)!r} has no metadata.jsonl; it needs one line per image like "
            '{"file_name": "0001.png", "text": "a caption"} (see scripts/make_shapes_dataset.py).'
        )
    num_images = 0
    for metadata in metadata_files:
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            num_images += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata}, line {number}: not valid JSON ({error}).") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{metadata}, line {number}: has no `file_name` key (keys: {list(row)}).")
            if not (metadata.parent / row["file_name"]).is_file():
                raise FileNotFoundError(
                    f"{metadata}, line {number}: image {row['file_name']!r} does not exist in {metadata.parent}."
                )
    if num_images == 0:
        raise ValueError(f"`train_data_dir`: {str(data_dir)!r} is empty: its metadata.jsonl lists no images.")


def resolve_columns(
    dataset: datasets.Dataset, image_column: str | None = None, caption_column: str | None = None
) -> tuple[str, str]:
    """The image and caption column names: as given (checked to exist), or detected like diffusers does."""
    columns = dataset.column_names
    available = f"available columns: {', '.join(columns)}"
    if image_column is None:
        images = [c for c in columns if isinstance(dataset.features[c], datasets.Image)]
        image_column = IMAGE_COLUMN if IMAGE_COLUMN in columns else (images[0] if images else None)
        if image_column is None:
            raise ValueError(f"No image column found (no 'image' column, none of feature type Image); set "
                             f"`image_column`. The dataset's {available}.")
    elif image_column not in columns:
        raise ValueError(f"`image_column`: {image_column!r} is not a column of the dataset; {available}.")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"`image_column`: {image_column!r} has feature {dataset.features[image_column]}, expected datasets.Image."
        )
    if caption_column is None:
        caption_column = next((c for c in CAPTION_COLUMN_CANDIDATES if c in columns), None)
        if caption_column is None:
            raise ValueError(f"No caption column found (tried {', '.join(CAPTION_COLUMN_CANDIDATES)}); set "
                             f"`caption_column`. The dataset's {available}.")
    elif caption_column not in columns:
        raise ValueError(f"`caption_column`: {caption_column!r} is not a column of the dataset; {available}.")
    return image_column, caption_column


def _check_captions(dataset: datasets.Dataset, caption_column: str) -> None:
    for index, caption in enumerate(dataset[CAPTION_COLUMN]):
        valid = isinstance(caption, str) or (
            isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption)
        )
        if not valid:
            raise ValueError(
                f"`caption_column`: {caption_column!r}, row {index}: {caption!r} is not a string or a non-empty "
                "list of strings."
            )


def _check_images(dataset: datasets.Dataset, on_bad_image: str, source: str) -> datasets.Dataset:
    """Decode every image once, so a bad file fails (or is skipped) now rather than hours into training. With N
    processes each decodes its own N-th of the rows and they share what they found: every process then raises the
    same error, or keeps the same rows. The sharing is a collective: every process must get here together, so never
    under `main_process_first` (training.run.train_data loads a checked source on all processes at once)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    images = dataset.select_columns([IMAGE_COLUMN])
    first, end = (len(dataset) * rank // state.num_processes for rank in (state.process_index, state.process_index + 1))
    bad: list[tuple[int, str, str]] = []  # (row, name, PIL's reason)
    for start in range(first, end, 256):  # 256 rows at a time: never every image's bytes at once
        cells = images[start : min(start + 256, end)][IMAGE_COLUMN]
        for index, cell in enumerate(cells, start=start):
            try:
                open_image(cell)
            except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
                bad.append((index, _image_name(cell, index), str(error)))
    if state.num_processes > 1:
        bad = sorted(gather_object(bad))
    if not bad:
        return dataset
    if on_bad_image == "stop":
        _, name, reason = bad[0]
        raise ValueError(f"Cannot read image {name} from {source}: {reason}. Fix or remove it, or set "
                         "on_bad_image=skip.")
    names = [name for _, name, _ in bad]
    examples = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    logger.warning(f"on_bad_image=skip: skipped {len(bad)} of {len(dataset)} images that cannot be read: {examples}")
    if len(bad) == len(dataset):
        raise ValueError(f"The dataset from {source} has no readable images ({len(bad)} unreadable).")
    unreadable = {index for index, _, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in unreadable])


def _image_name(cell: dict, index: int) -> str:
    return f"{cell['path']!r} (row {index})" if cell.get("path") else f"row {index}"


def open_image(cell: dict) -> Image.Image:
    """An undecoded datasets.Image cell ({"bytes", "path"}) → a fully decoded RGB PIL image, upright per EXIF."""
    if cell.get("bytes") is not None:
        image = Image.open(io.BytesIO(cell["bytes"]))
    elif cell.get("path"):
        image = Image.open(cell["path"])
    else:
        raise ValueError("the image cell has neither bytes nor a path")
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale (PNG, TIFF): PIL's convert("RGB") clips at 255, which would make it almost all white.
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
    return image.convert("RGB")


_open_image = open_image  # the name tests/test_data.py imports


def all_captions(dataset: datasets.Dataset) -> list[str]:
    """Every caption of a loaded dataset, lists flattened (e.g. to train a tokenizer on)."""
    captions = []
    for caption in dataset[CAPTION_COLUMN]:
        captions.extend([caption] if isinstance(caption, str) else caption)
    return captions


# ---- transforms, the torch dataset and collate -----------------------------------------------------------------------


# CPython's tuple hash (Python ≥ 3.8: xxHash64's lane mixing, Objects/tupleobject.c) of non-negative integers, written
# out so that seeds do not depend on the Python version: `mix_seed(*keys) == hash(keys) % 2**63` (tests check it),
# which is what sculpt has seeded per-sample generators with since its first release.
_XXPRIME_1, _XXPRIME_2, _XXPRIME_5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_MASK64, _HASH_MODULUS = 2**64 - 1, 2**61 - 1  # hash(n) = n mod (2**61 - 1) for integers n ≥ 0


def mix_seed(*keys: int) -> int:
    """One seed in [0, 2**63) from non-negative integer `keys` (seed, step, index, ...); nearby keys give unrelated
    seeds, and a different number of keys gives a different stream."""
    accumulator = _XXPRIME_5
    for key in keys:
        if not isinstance(key, int) or key < 0:
            raise ValueError(f"`keys`: {key!r} must be a non-negative integer.")
        accumulator = (accumulator + (key % _HASH_MODULUS) * _XXPRIME_2) & _MASK64
        accumulator = ((accumulator << 31) | (accumulator >> 33)) & _MASK64
        accumulator = (accumulator * _XXPRIME_1) & _MASK64
    accumulator = (accumulator + (len(keys) ^ (_XXPRIME_5 ^ 3527539))) & _MASK64
    signed = accumulator - 2**64 if accumulator >= 2**63 else accumulator
    return (1546275796 if signed == -1 else signed) % 2**63


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by `mix_seed(*keys)`: the one way sculpt seeds per-sample randomness."""
    return torch.Generator().manual_seed(mix_seed(*keys))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one sample's random choices (crop, flip, caption), from (seed, epoch, index)."""
    return seeded_generator(seed, epoch, index)


def train_transform(
    image: Image.Image,
    resolution: int | tuple[int, int],
    center_crop: bool = False,
    random_flip: bool = False,
    interpolation: str = "lanczos",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """diffusers' training transform, without torchvision: resize the shorter side to `resolution`, crop a square
    (center, or random), maybe flip horizontally, → float32 (3, R, R) in [-1, 1]. With `resolution` a (width,
    height) bucket (training/buckets.py): resize to just cover it (the side with the larger scale fits exactly),
    then crop the other side to it.

    Random draws, in this order and only when used: crop top, crop left, flip. They come from `generator` (torch's
    global generator if None).
    """
    image = image.convert("RGB")
    target_w, target_h = (resolution, resolution) if isinstance(resolution, int) else resolution
    width, height = image.size
    # 1. Resize so the image just covers the target (for a square: the shorter side is `resolution`, with
    #    torchvision.transforms.Resize(int) rounding).
    if target_w / width >= target_h / height:
        new_size = (target_w, max(target_h, int(target_w * height / width)))
    else:
        new_size = (max(target_w, int(target_h * width / height)), target_h)
    image = image.resize(new_size, resample=_RESAMPLING[interpolation])
    # 2. Crop to target_w × target_h, 3. flip horizontally with probability 1/2.
    width, height = image.size
    top, left, flip = draw_view(generator, center_crop, random_flip, (height - target_h, width - target_w))
    image = image.crop((left, top, left + target_w, top + target_h))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # 4. uint8 HWC → float CHW in [-1, 1] (ToTensor then Normalize([0.5], [0.5])).
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(127.5).sub(1.0)


def draw_view(generator: torch.Generator | None, center_crop: bool, random_flip: bool,
              room: tuple[int, int] = (0, 0)) -> tuple[int, int, bool]:  # fmt: skip
    """The random choices of `train_transform`, in its order: crop top and left (random crops only; `room` is the
    (height, width) the resized image exceeds the target by; center crops take the middle), then the flip. The disk
    latent cache (training/latent_cache.py) draws a cached sample's flip through this too."""
    if center_crop:
        top, left = int(round(room[0] / 2.0)), int(round(room[1] / 2.0))
    else:
        top = int(torch.randint(0, room[0] + 1, (1,), generator=generator))
        left = int(torch.randint(0, room[1] + 1, (1,), generator=generator))
    flip = random_flip and torch.rand(1, generator=generator).item() < 0.5
    return top, left, flip


def pick_caption(caption: str | Sequence[str], generator: torch.Generator | None = None) -> str:
    """A caption cell holding several captions: a random one when a generator is given (training), else the first."""
    if isinstance(caption, str):
        return caption
    if generator is None:
        return caption[0]
    return caption[int(torch.randint(0, len(caption), (1,), generator=generator))]


class ImageCaptionDataset(torch.utils.data.Dataset):
    """A loaded dataset (from `load_train_dataset`) as torch samples {"pixel_values", "caption"}.

    Sample `index` in epoch `epoch` draws its crop, flip and caption choice from `sample_generator(seed, epoch,
    index)`. Call `set_epoch` before iterating each epoch (with `persistent_workers=False`, the default, workers copy
    the dataset when iteration starts, so they see the new epoch). `train=False` takes the first of several captions.
    `sizes`: the (width, height) bucket of each example (aspect-ratio bucketing), else `resolution` squares.
    `pixels=False` gives the caption alone, decoding no image: for training on cached latents, where the pixels
    would go unused. Its caption is the one the full sample would carry (see `__getitem__`).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = False,
        interpolation: str = "lanczos",
        seed: int = 0,
        train: bool = True,
        sizes: Sequence[tuple[int, int]] | None = None,
        pixels: bool = True,
    ):
        if interpolation not in _RESAMPLING:
            raise ValueError(f"`interpolation`: {interpolation!r} is not one of {', '.join(_RESAMPLING)}.")
        self.dataset = dataset
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.interpolation = interpolation
        self.seed = seed
        self.train = train
        self.sizes = sizes
        self.pixels = pixels
        self.captions = None if pixels else dataset[CAPTION_COLUMN]  # read once: a row read would fetch its image
        self.epoch = 0

    @classmethod
    def from_config(cls, dataset: datasets.Dataset, config: TrainConfig, train: bool = True,
                    sizes: Sequence[tuple[int, int]] | None = None, pixels: bool = True) -> ImageCaptionDataset:
        return cls(dataset, config.resolution, config.center_crop, config.random_flip,
                   config.image_interpolation_mode, config.seed, train, sizes, pixels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = sample_generator(self.seed, self.epoch, index)
        if not self.pixels:
            # The draws the transform would make come first: cached latents come with a center crop and no flip
            # (TrainConfig refuses the others), and a random crop of a built-in dataset's images, which are drawn
            # at `resolution`, draws its two offsets from one position each.
            if not self.center_crop:
                torch.randint(0, 1, (2,), generator=generator)
            return {"caption": pick_caption(self.captions[index], generator if self.train else None)}
        row = self.dataset[index]
        try:
            image = open_image(row[IMAGE_COLUMN])
        except Exception as error:
            # Every image decoded when training started (`_check_images`), so this one changed since. Skipping it now
            # would change the batches, so whatever `on_bad_image` says, stop; the last checkpoint is untouched.
            raise ValueError(
                f"Cannot read image {_image_name(row[IMAGE_COLUMN], index)}: {error}. It could be read when training "
                f"started, so it changed on disk since; restore it and resume with resume_from_checkpoint=latest."
            ) from error
        return self.make_sample(image, row[CAPTION_COLUMN], index)

    def make_sample(self, image: Image.Image, caption: str | Sequence[str], index: int) -> dict[str, Any]:
        """Sample `index` of the current epoch from its decoded image and caption cell (also what the streaming
        reader, training/streaming.py, makes of each row it reads)."""
        generator = sample_generator(self.seed, self.epoch, index)
        target = self.resolution if self.sizes is None else self.sizes[index]
        pixel_values = train_transform(image, target, self.center_crop, self.random_flip, self.interpolation, generator)
        caption = pick_caption(caption, generator if self.train else None)
        return {"pixel_values": pixel_values, "caption": caption}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch → {"pixel_values": float32 (B, 3, R, R), "captions": list[str]}; the training loop tokenizes. Every
    tensor of the examples is stacked so (the disk latent cache's samples carry latents instead of pixels; a
    caption-only dataset's carry none)."""
    batch = {key: torch.stack([example[key] for example in examples]).to(memory_format=torch.contiguous_format).float()
             for key, value in examples[0].items() if isinstance(value, torch.Tensor)}  # fmt: skip
    return {**batch, "captions": [example["caption"] for example in examples]}


# ---- order and batches -----------------------------------------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset per epoch, drawn from (seed, epoch) alone, so every process and every resumed
    run agrees on the order. `set_epoch` also moves the dataset's per-sample augmentation stream."""

    def __init__(self, dataset: ImageCaptionDataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


class _WithIndex(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def collate_with_index(examples: list[dict]) -> dict:
    """`collate_fn`, plus the examples' dataset `indices`."""
    return {**collate_fn(examples), "indices": [example["index"] for example in examples]}


def build_train_dataloader(dataset, config, batch_size: int | None = None, shuffle: bool = True, augment: bool = True,
                           num_processes: int = 1, multiple: int | None = None, pixels: bool = True,
                           prior_from: int | None = None, samples=None):  # fmt: skip
    """(DataLoader, EpochSampler) over `dataset` with the config's transforms; batches carry `pixel_values`,
    `captions` and dataset `indices`. `augment=False` gives the deterministic view (center crop, no flip).
    `prior_from`: DreamBooth's prior preservation, rows from this index on are class images, and every batch is
    `batch_size` training images then `batch_size` class images (training/dreambooth.py).
    `samples`: a torch dataset over the same rows to draw from instead of decoding `dataset`'s images (the disk
    latent cache's, training/latent_cache.py), in the same order and buckets.

    With aspect-ratio bucketing (`aspect_ratio_buckets` / `bucket_sizes`, training/buckets.py) every batch is one
    bucket's; `num_processes` (the launch's) makes each global step one bucket's, and `multiple` (VAE factor × UNet
    downsampling, `models.bucket_multiple`) is what bucket sides must divide by. `pixels=False`: batches of captions
    and indices only (training on cached latents)."""
    batch_size = batch_size or config.train_batch_size
    sizes, bucket_sampler = None, None
    if config.aspect_ratio_buckets or config.bucket_sizes:
        sizes, bucket_of = _bucket_sizes(dataset, config, batch_size * (num_processes if shuffle else 1), multiple)
    torch_dataset = ImageCaptionDataset.from_config(dataset, config, train=augment, sizes=sizes, pixels=pixels)
    if not augment:
        torch_dataset.center_crop, torch_dataset.random_flip = True, False
    torch_dataset = _WithIndex(torch_dataset if samples is None else samples)
    if shuffle and prior_from is None and len(torch_dataset) < batch_size:
        raise ValueError(
            f"`train_batch_size`: {batch_size} is larger than the dataset ({len(torch_dataset)} examples); "
            f"lower it or add data."
        )
    sampler = EpochSampler(torch_dataset, config.seed, shuffle=shuffle)
    if prior_from is not None and shuffle:
        from .dreambooth import PriorBatchSampler

        loader = torch.utils.data.DataLoader(
            torch_dataset, batch_sampler=PriorBatchSampler(sampler, prior_from, batch_size),
            collate_fn=collate_with_index, num_workers=config.dataloader_num_workers,
        )  # fmt: skip
        return loader, sampler
    if sizes is None:
        loader = torch.utils.data.DataLoader(
            torch_dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_with_index,
            num_workers=config.dataloader_num_workers,
            drop_last=shuffle,  # every training step sees a full batch, so per-process batches line up under DDP
        )
        return loader, sampler
    bucket_sampler = BucketBatchSampler(sampler, bucket_of, batch_size, num_processes, shuffle=shuffle)
    if shuffle and bucket_sampler.left_out_per_epoch():
        logger.warning(f"bucketing: each epoch leaves out {bucket_sampler.left_out_per_epoch()} of {len(dataset)} images "
                    f"(each bucket's remainder short of a global batch of {batch_size * num_processes}; a different "
                    "set every epoch)", main_process_only=True)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        torch_dataset, batch_sampler=bucket_sampler, collate_fn=collate_with_index,
        num_workers=config.dataloader_num_workers,
    )  # fmt: skip
    return loader, sampler


def image_bucket_sizes(dataset, config, global_batch: int, multiple: int | None) -> list[tuple[int, int]] | None:
    """The (width, height) bucket each example trains at (global batch = per-process batch × processes), or None
    without bucketing: what the disk latent cache encodes each image at."""
    if not (config.aspect_ratio_buckets or config.bucket_sizes):
        return None
    return _bucket_sizes(dataset, config, global_batch, multiple)[0]


def _bucket_sizes(dataset, config, global_batch: int, multiple: int | None) -> tuple[list[tuple[int, int]], list[int]]:
    """The (width, height) bucket of every example, and its bucket number."""
    multiple = multiple or 1
    if config.bucket_sizes:
        buckets = [parse_size(text, "bucket_sizes") for text in config.bucket_sizes]
        check_buckets(buckets, multiple)
    else:
        buckets = make_buckets(config.resolution, multiple)
    cells = dataset.select_columns([IMAGE_COLUMN])[IMAGE_COLUMN]
    image_sizes = [image_size(cell) for cell in cells]
    names = [_image_name(cell, index) for index, cell in enumerate(cells)]
    bucket_of = assign_buckets(image_sizes, buckets, global_batch, names, explicit=bool(config.bucket_sizes))
    used = sorted(set(bucket_of))
    logger.info("bucketing: " + ", ".join(f"{buckets[b][0]}x{buckets[b][1]}: {bucket_of.count(b)}" for b in used),
                main_process_only=True)  # fmt: skip
    return [buckets[b] for b in bucket_of], bucket_of


def image_size(cell: dict) -> tuple[int, int]:
    """(width, height) of an undecoded image cell as `_open_image` will give it (upright per EXIF), read from the
    file's header without decoding the pixels."""
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]
    with Image.open(source) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation: 5-8 rotate by 90°
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
