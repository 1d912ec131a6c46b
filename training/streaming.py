"""Streaming training data (`streaming: true`): datasets larger than memory or local disk, read shard by shard as the
batches need them, with the same guarantees as the map-style path of training/data.py: a seeded order per epoch,
exact resume without replaying the epoch, and N processes with batch B training on what one process with batch N·B
trains on (in the "rows" split, below).

Sources: `dataset_name` as a folder of parquet, arrow or webdataset (.tar) shards (scripts/make_shards.py writes
parquet ones) or a Hub dataset id, or `train_data_dir` (an imagefolder), opened with `datasets.load_dataset(...,
streaming=True)`: a `datasets.IterableDataset`, one shard per file.

The order of an epoch is a pure function of (seed, epoch) and the shards' row counts, which are read once at the
start (parquet footers; other formats: one pass over the caption column):

    shard order   the shards (this rank's, in the "shards" split) in a permutation seeded by (seed, epoch)
    windows       that sequence of rows cut into windows of `shuffle_buffer_size` rows, each permuted by a generator
                  seeded by (seed, epoch, window): a shuffle buffer that is filled, permuted and drained
    split         "shards" when the shard count divides by the number of processes: each rank reads only its
                  contiguous block of shards (as `datasets.distributed.split_dataset_by_node` does), and the order
                  depends on the number of processes, which a checkpoint records. Otherwise "rows": one global
                  order, and rank r takes the r-th per-process batch of every N (what accelerate hands out for a
                  map-style loader), so 2 × B trains on exactly what 1 × 2B does; every rank reads every row's bytes
                  then, but decodes only its own.

Why not `IterableDataset.shuffle(buffer_size=...)` and its `state_dict()`: datasets 5.2 saves the position of the
shards but not the buffer's content ("The shuffle buffer will be refilled before starting to yield new examples",
`BufferShuffledExamplesIterable.load_state_dict`), so a resumed run trains on other batches than the uninterrupted
one. Here batch j of epoch e is computable from (e, j) alone: a resumed run seeks to the shard and row where its
window starts (skipping rows inside one shard, undecoded), re-reads at most one window and goes on; the checkpoint
needs no data state beyond the step, and records the shards' names and row counts so that a resume on changed data
is refused. The price of a window shuffle over a rolling buffer: a row moves at most `shuffle_buffer_size` places
(plus the shard order); shards written in a random order (make_shards.py --shuffle_seed) mix the rest.

Each sample's crop, flip and caption choice come from `sample_generator(seed, epoch, row)` as in data.py, with `row`
the row's place in the unshuffled source (shards in file order), so they do not depend on order or processes either.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from pipelines.loading import looks_like_path

from .builtin import builtin_dataset_dir
from .config import BUILTIN_DATASETS
from .data import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    ImageCaptionDataset,
    check_imagefolder,
    collate_with_index,
    open_image,
    resolve_columns,
    seeded_generator,
)

logger = get_logger(__name__)

SHARD_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}  # file suffix → datasets builder
_SHARD_ORDER, _WINDOW = 1, 2  # keys that keep the seeded streams of shard order and windows apart


# ---------------------------------------------------------------------------------------------------------------------
# The source: its shards and their rows
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Stream:
    """A streamed training split: `dataset` (a `datasets.IterableDataset` with the columns `image`, undecoded, and
    `text`), one shard per entry of `files`, holding `rows[i]` rows. Row `r` of shard `i` is row
    `offsets[i] + r` of the source. `len(stream)` is the number of rows; `stream["text"]` reads every caption (only
    that column), e.g. to train a tokenizer on."""

    source: str  # for messages: where the data comes from
    files: list[str]  # the shards' names, for messages and the checkpoint's record
    rows: list[int]
    dataset: datasets.IterableDataset
    root: str | None = None  # the local folder the data lives in (None: the Hub), whose files key the disk cache
    offsets: list[int] = field(init=False)

    def __post_init__(self):
        self.offsets = [0]
        for count in self.rows:
            self.offsets.append(self.offsets[-1] + count)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, column: str) -> list:
        if column != CAPTION_COLUMN:
            raise KeyError(f"a stream gives its {CAPTION_COLUMN!r} column only; read images with `read`")
        return [caption for batch in self.dataset.select_columns([CAPTION_COLUMN]).iter(batch_size=1024)
                for caption in batch[CAPTION_COLUMN]]  # fmt: skip

    def shard(self, index: int) -> datasets.IterableDataset:
        return self.dataset.shard(num_shards=len(self.files), index=index, contiguous=True)

    def read(self, index: int, start: int = 0) -> Iterator[dict]:
        """The rows of shard `index` from row `start` on (the rows before it are skipped undecoded)."""
        shard = self.shard(index)
        # Through `iter`, not `for row in shard`: inside a data loader worker datasets would hand each worker only
        # some of the shard's files (`IterableDataset._iter_pytorch`), and here every worker reads its own rows.
        for batch in (shard.skip(start) if start else shard).iter(batch_size=64):
            columns = list(batch)
            for values in zip(*(batch[column] for column in columns)):
                yield dict(zip(columns, values))

    def record(self) -> dict:
        """What a checkpoint records of the data, to refuse a resume on other data."""
        return {"source": self.source, "files": self.files, "rows": self.rows}

    def where(self, row: int) -> str:
        """'shard <file>, row <n>' for a row of the source."""
        index = bisect.bisect_right(self.offsets, row) - 1
        return f"shard {self.files[index]!r}, row {row - self.offsets[index]}"


def load_stream(config) -> Stream:
    """The config's data source as a `Stream`, checked before training starts: the shards exist, every shard has the
    image and caption columns, and there are rows. Needs an accelerate state for its log messages."""
    builder, kwargs, files, source, root = _resolve_source(config)
    dataset = datasets.load_dataset(builder, streaming=True, split="train", cache_dir=config.cache_dir, **kwargs)
    if files is None:  # a Hub dataset: one shard per data file, named by its number
        files = [f"shard {i}" for i in range(dataset.n_shards)]
    elif dataset.n_shards != len(files):
        raise ValueError(f"{source}: datasets reads {dataset.n_shards} shards from {len(files)} files; give one file "
                         "per shard (scripts/make_shards.py writes them).")  # fmt: skip
    if dataset.features is None:
        dataset = dataset._resolve_features()
    image_column, caption_column = resolve_columns(dataset, config.image_column, config.caption_column)
    rows = _count_rows(dataset, builder, kwargs, files, image_column, caption_column, source)
    if sum(rows) == 0:
        raise ValueError(f"The dataset from {source} is empty (0 rows).")
    dataset = dataset.select_columns([image_column, caption_column])
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if (image_column, caption_column) != (IMAGE_COLUMN, CAPTION_COLUMN):
        dataset = dataset.rename_columns({image_column: "__image", caption_column: "__text"})
        dataset = dataset.rename_columns({"__image": IMAGE_COLUMN, "__text": CAPTION_COLUMN})
    names = [Path(f).name if looks_like_path(f) else f for f in files]
    logger.info(f"Streaming {sum(rows)} rows in {len(files)} shard(s) from {source} (columns {image_column!r}, "
                f"{caption_column!r})")  # fmt: skip
    return Stream(source=source, files=names, rows=rows, dataset=dataset, root=root)


def _resolve_source(config) -> tuple[str, dict, list[str] | None, str, str | None]:
    """(datasets builder, load_dataset kwargs, shard files or None for a Hub id, description, local folder)."""
    if config.dataset_name in BUILTIN_DATASETS:  # emoji / digits: their imagefolder (config refuses shapes)
        folder = builtin_dataset_dir(config)
        files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("metadata.jsonl"))]
        return "imagefolder", {"data_dir": str(folder)}, files, f"the built-in {config.dataset_name}", str(folder)
    if config.train_data_dir is not None:
        folder = Path(config.train_data_dir)
        check_imagefolder(folder)
        files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("metadata.jsonl"))]
        return "imagefolder", {"data_dir": str(folder)}, files, f"`train_data_dir`: {str(folder)!r}", str(folder)
    name = config.dataset_name
    path = Path(name).expanduser()
    what = f"`dataset_name`: {name!r}"
    if path.is_dir():
        found = {suffix: sorted(str(p) for p in path.rglob(f"*{suffix}")) for suffix in SHARD_FORMATS}
        kinds = [suffix for suffix, paths in found.items() if paths]
        if len(kinds) != 1:
            listed = ", ".join(f"{len(found[s])} {s}" for s in kinds) or "none"
            raise ValueError(f"{what}: with `streaming`: true a folder must hold shards of one format "
                             f"({', '.join(SHARD_FORMATS)}); it holds {listed}.")  # fmt: skip
        files = found[kinds[0]]
        return SHARD_FORMATS[kinds[0]], {"data_files": {"train": files}}, files, what, str(path)
    if looks_like_path(name):
        raise FileNotFoundError(f"{what} looks like a path but does not exist.")
    kwargs = {"name": config.dataset_config_name} if config.dataset_config_name else {}
    return name, kwargs, None, what, None


def _count_rows(dataset, builder, kwargs, files, image_column, caption_column, source) -> list[int]:
    """Rows per shard, checking that each shard has both columns: parquet from its footer, other formats by one pass
    over the caption column."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        rows = []
        for path in files:
            metadata = pq.read_metadata(path)
            columns = metadata.schema.to_arrow_schema().names
            missing = [c for c in (image_column, caption_column) if c not in columns]
            if missing:
                raise ValueError(f"{source}: shard {Path(path).name!r} has no column {missing[0]!r} (its columns: "
                                 f"{', '.join(columns)}); every shard needs {image_column!r} and {caption_column!r}.")
            rows.append(metadata.num_rows)
        return rows
    rows = []
    bar = tqdm(files, desc="count rows", disable=len(files) < 8)
    for index, name in enumerate(bar):
        shard = dataset.shard(num_shards=len(files), index=index, contiguous=True)
        count = 0
        for row in shard.select_columns([caption_column]):
            if row.get(caption_column) is None:
                raise ValueError(f"{source}: shard {name!r}, row {count} has no {caption_column!r} value.")
            count += 1
        rows.append(count)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The order of an epoch
# ---------------------------------------------------------------------------------------------------------------------
def split_by_shards(num_shards: int, num_processes: int) -> bool:
    """Each rank its own shards when they divide evenly (datasets' split_dataset_by_node rule), else one global order
    split by batches."""
    return num_processes > 1 and num_shards % num_processes == 0


def rank_shards(num_shards: int, num_processes: int, rank: int) -> list[int]:
    """The shards rank `rank` reads: a contiguous block in the "shards" split, all of them in the "rows" split."""
    if not split_by_shards(num_shards, num_processes):
        return list(range(num_shards))
    per_rank = num_shards // num_processes
    return list(range(rank * per_rank, (rank + 1) * per_rank))


def shard_order(shards: list[int], seed: int, epoch: int, rank_key: int, shuffle: bool) -> list[int]:
    """The epoch's permutation of `shards` (file order without shuffling)."""
    if not shuffle:
        return list(shards)
    permutation = torch.randperm(len(shards), generator=seeded_generator(seed, epoch, _SHARD_ORDER, rank_key))
    return [shards[i] for i in permutation.tolist()]


def window_permutation(seed: int, epoch: int, rank_key: int, window: int, length: int) -> list[int]:
    """Emitted place i of a window takes the row at place permutation[i] of the window."""
    return torch.randperm(length, generator=seeded_generator(seed, epoch, _WINDOW, rank_key, window)).tolist()


class StreamLoader:
    """The batches of a `Stream` for one process, epoch by epoch: what training/run.py's `train_batches` iterates.
    `len()` is the batches per epoch (equal on every rank; a multiple of `accumulation`), `set_epoch` picks the
    epoch, `starting_at(j)` yields batch j onwards of it without reading what comes before. Batches are
    {"pixel_values", "captions", "indices"} as data.build_train_dataloader's, `indices` being source rows.
    `shuffle=False` reads the rank's rows in file order, the last batch short (for caches and measurements)."""

    def __init__(self, stream: Stream, config, rank: int = 0, num_processes: int = 1, batch_size: int | None = None,
                 shuffle: bool = True, augment: bool = True, accumulation: int = 1, samples=None):  # fmt: skip
        if not shuffle and num_processes != 1:
            raise AssertionError("an unshuffled stream is read by one process")  # internal: caches split by shard
        self.stream, self.rank, self.num_processes = stream, rank, num_processes
        self.samples = samples  # the disk latent cache: its `sample(row, epoch)` instead of reading the shards
        self.batch_size = batch_size or config.train_batch_size
        self.shuffle, self.seed, self.epoch = shuffle, config.seed, 0
        self.window = config.shuffle_buffer_size
        self.num_workers = config.dataloader_num_workers
        self.by_shards = split_by_shards(len(stream.files), num_processes)
        self.transform = ImageCaptionDataset.from_config(None, config, train=augment)
        if not augment:
            self.transform.center_crop, self.transform.random_flip = True, False
        rows = [sum(stream.rows[i] for i in rank_shards(len(stream.files), num_processes, r))
                for r in range(num_processes)]  # fmt: skip
        if not shuffle:
            self.batches = math.ceil(rows[rank] / self.batch_size)
        elif self.by_shards:
            self.batches = min(rows) // self.batch_size
        else:
            self.batches = len(stream) // (self.batch_size * num_processes)
        if shuffle:
            self.batches -= self.batches % accumulation
            if self.batches == 0:
                raise ValueError(
                    f"`train_batch_size`: {self.batch_size} × {num_processes} process(es) × {accumulation} "
                    f"accumulation is larger than the data of a process ({min(rows)} rows); lower it or add data."
                )
        self.rows_of_rank = rows[rank]

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        return self.starting_at(0)

    def describe(self) -> str:
        split = "by shards" if self.by_shards else "by batches of one global order"
        return (f"{len(self.stream)} rows in {len(self.stream.files)} shard(s), {self.batches} batches/epoch per "
                f"process, split {split}, shuffle window {self.window}")  # fmt: skip

    def starting_at(self, first: int) -> Iterator[dict]:
        """Batches `first`, `first + 1`, ... of the current epoch. With `dataloader_num_workers`, worker w makes the
        batches j with (j - first) % workers == w, and torch's loader returns them round-robin: in order."""
        batches = _EpochBatches(self, self.epoch, first)
        if self.num_workers == 0:
            return iter(batches)
        return iter(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=self.num_workers))

    # ---- where each batch's rows are ------------------------------------------------------------------------------
    def sequence(self, epoch: int) -> tuple[list[int], list[int]]:
        """The epoch's shards in reading order (this rank's), and where each starts in that sequence of rows."""
        shards = rank_shards(len(self.stream.files), self.num_processes, self.rank)
        order = shard_order(shards, self.seed, epoch, self.rank_key, self.shuffle)
        starts = [0]
        for index in order:
            starts.append(starts[-1] + self.stream.rows[index])
        return order, starts

    @property
    def rank_key(self) -> int:
        """What seeds this rank's shuffle besides (seed, epoch): its rank when it reads its own shards, else 0 (one
        global order)."""
        return self.rank if self.by_shards else 0

    def batch_of(self, place: int) -> int | None:
        """The batch of this rank that takes emitted place `place` of the sequence, or None (another rank's)."""
        batch = place // self.batch_size
        if self.by_shards or not self.shuffle:
            return batch
        return batch // self.num_processes if batch % self.num_processes == self.rank else None

    def places(self, batch: int) -> range:
        """The emitted places of the sequence that batch `batch` of this rank takes."""
        stride, offset = (1, 0) if self.by_shards or not self.shuffle else (self.num_processes, self.rank)
        first = (batch * stride + offset) * self.batch_size
        return range(first, min(first + self.batch_size, self.rows_of_rank))


class _EpochBatches(torch.utils.data.IterableDataset):
    """Batches `first`, `first + 1`, ... of one epoch of a `StreamLoader` (this worker's share of them), read one
    window at a time: of each window only the rows this worker's batches take are kept."""

    def __init__(self, loader: StreamLoader, epoch: int, first: int):
        self.loader, self.epoch, self.first = loader, epoch, first

    def __iter__(self) -> Iterator[dict]:
        loader, stream = self.loader, self.loader.stream
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = range(self.first + worker, loader.batches, workers)
        if not mine:
            return

        def wanted(place: int) -> bool:
            batch = loader.batch_of(place)
            return batch is not None and batch in mine

        order, starts = loader.sequence(self.epoch)
        reader = _Reader(stream, order, starts)
        window_size = loader.window if loader.shuffle else loader.batch_size
        if loader.samples is not None:  # from the cache: the order is all that is needed of the shards
            for batch in mine:
                rows = [reader.source_row(self.source_place(place, window_size, reader.total))
                        for place in loader.places(batch)]  # fmt: skip
                yield collate_with_index([{**loader.samples.sample(row, self.epoch), "index": row} for row in rows])
            return
        loaded, current = {}, None
        loader.transform.set_epoch(self.epoch)
        for batch in mine:
            examples = []
            for place in loader.places(batch):
                window, inside = divmod(place, window_size)
                if window != current:  # read the next window, keeping what this worker takes from it
                    current, start = window, window * window_size
                    length = min(window_size, reader.total - start)
                    permutation = (window_permutation(loader.seed, self.epoch, loader.rank_key, window, length)
                                   if loader.shuffle else range(length))  # fmt: skip
                    keep = {start + permutation[i]: start + i for i in range(length) if wanted(start + i)}
                    loaded = reader.read(start, length, keep)
                row, cell = loaded.pop(place)
                examples.append(self.sample(row, cell))
            yield collate_with_index(examples)

    def source_place(self, place: int, window_size: int, total: int) -> int:
        """The place in the (unshuffled) sequence whose row lands at emitted place `place`."""
        if not self.loader.shuffle:
            return place
        window, inside = divmod(place, window_size)
        if getattr(self, "_window", None) != window:
            length = min(window_size, total - window * window_size)
            self._window, self._permutation = window, window_permutation(
                self.loader.seed, self.epoch, self.loader.rank_key, window, length)
        return window * window_size + self._permutation[inside]

    def sample(self, row: int, cell: dict) -> dict:
        stream = self.loader.stream
        try:
            image = open_image(cell[IMAGE_COLUMN])
        except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise ValueError(f"Cannot read the image of {stream.where(row)} from {stream.source}: {error}. Fix or "
                             "remove that row and write the shard again.") from error  # fmt: skip
        return {**self.loader.transform.make_sample(image, cell[CAPTION_COLUMN], row), "index": row}


class _Reader:
    """Rows of an epoch's sequence by place, read forward shard after shard; a read that does not start where the
    previous one ended seeks to its shard and row (skipping rows inside that shard, undecoded)."""

    def __init__(self, stream: Stream, order: list[int], starts: list[int]):
        self.stream, self.order, self.starts = stream, order, starts
        self.total = starts[-1]
        self.position, self.slot, self.rows = -1, -1, iter(())

    def source_row(self, place: int) -> int:
        """The source row at `place` of the sequence."""
        slot = bisect.bisect_right(self.starts, place) - 1
        return self.stream.offsets[self.order[slot]] + place - self.starts[slot]

    def read(self, start: int, length: int, keep: dict[int, int]) -> dict[int, tuple[int, dict]]:
        """{emitted place: (source row, row)} for the places `start .. start + length` of the sequence that `keep`
        maps to an emitted place."""
        if start != self.position:
            self.slot = bisect.bisect_right(self.starts, start) - 1
            self.rows = self.stream.read(self.order[self.slot], start - self.starts[self.slot])
            self.position = start
        found = {}
        for place in range(start, start + length):
            cell = next(self.rows, None)
            while cell is None:  # the shard ended: the next one
                self.slot += 1
                self.rows = self.stream.read(self.order[self.slot])
                cell = next(self.rows, None)
            if place in keep:
                shard = self.order[self.slot]
                found[keep[place]] = (self.stream.offsets[shard] + place - self.starts[self.slot], cell)
        self.position = start + length
        return found


def check_resume(state: dict, stream: Stream) -> None:
    """Refuse to resume a streaming run on data other than the checkpoint's (other shards, or other row counts):
    its batches would not be the uninterrupted run's."""
    recorded = state.get("data")
    if recorded is None or recorded == stream.record():
        return
    now = stream.record()
    differ = [key for key in now if recorded.get(key) != now[key]]
    raise ValueError(
        f"`resume_from_checkpoint`: the checkpoint was written while streaming other data ({', '.join(differ)} "
        f"differ: {recorded.get(differ[0])!r} there, {now[differ[0]]!r} now). Resume on the same shards, or start a "
        "new run."
    )
