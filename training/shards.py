"""Parquet shards of an image-caption dataset, for `streaming: true` (training/streaming.py): scripts/make_shards.py.

A source (an imagefolder, or a built-in dataset) is read row by row and written to `train-00000-of-00008.parquet`,
... of a given number of rows or bytes each, with datasets' feature metadata in the schema (so `load_dataset
("parquet", ...)` reads the image column as `datasets.Image`) and the image files' own bytes (nothing is re-encoded).
Rows go in their order, or in a permutation seeded by `shuffle_seed`, which makes every shard a random sample of the
dataset: what a streaming run's window shuffle then needs least. Memory holds one row group at a time; the same
source and arguments give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

ROW_GROUP = 128  # rows per parquet row group: what a reader decodes at once, and the unit a resumed run skips over
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64MB' → 67108864 (KB/MB/GB are powers of 1024; a bare number is bytes)."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"`max_shard_size`: {text!r} is not a size; use e.g. 500KB, 64MB or 1GB.")
    unit = match.group(2).upper().rstrip("B")
    return int(float(match.group(1)) * 1024 ** " KMG".index(unit or " "))


def imagefolder_rows(folder: str | Path) -> tuple[int, Callable[[int], dict]]:
    """(number of rows, row i) of an imagefolder: its metadata.jsonl lines in order, each with the image file's bytes
    as `image` and every other key but `file_name`."""
    from .data import check_imagefolder

    folder = Path(folder)
    check_imagefolder(folder)
    lines = []
    for metadata in sorted(folder.rglob("metadata.jsonl")):
        lines += [(metadata.parent, json.loads(line)) for line in metadata.read_text().splitlines() if line.strip()]

    def row(index: int) -> dict:
        base, entry = lines[index]
        entry = dict(entry)
        name = entry.pop("file_name")
        return {"image": {"bytes": (base / name).read_bytes(), "path": name}, **entry}

    return len(lines), row


def shapes_rows(num_samples: int, resolution: int, seed: int) -> tuple[int, Callable[[int], dict]]:
    """(number of rows, row i) of the built-in shapes dataset, each sample drawn when it is written (PNG)."""
    import io

    from .builtin.shapes import make_shapes_dataset, make_shapes_sample

    make_shapes_dataset(1, resolution, seed)  # checks the arguments

    def row(index: int) -> dict:
        image, attributes = make_shapes_sample(index, resolution, seed)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": {"bytes": buffer.getvalue(), "path": f"{index:06d}.png"}, **attributes}

    return num_samples, row


def write_shards(count: int, row: Callable[[int], dict], output_dir: str | Path, rows_per_shard: int | None = None,
                 max_shard_size: int | None = None, shuffle_seed: int | None = None) -> list[Path]:  # fmt: skip
    """Write rows 0..count-1 (`row(i)`, in order or permuted by `shuffle_seed`) as parquet shards of `rows_per_shard`
    rows or about `max_shard_size` bytes of images each (exactly one of the two) into the new or empty
    `output_dir`; returns the shard paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (rows_per_shard is None) == (max_shard_size is None):
        raise ValueError("Give exactly one of `rows_per_shard` and `max_shard_size`.")
    if rows_per_shard is not None and rows_per_shard < 1:
        raise ValueError(f"`rows_per_shard`: {rows_per_shard} must be ≥ 1.")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"`output_dir`: {str(output_dir)!r} exists and is not an empty folder.")
    if count < 1:
        raise ValueError("The source has no rows.")
    order = list(range(count))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(count).tolist()
    first = row(order[0])
    others = {k: v for k, v in first.items() if k != "image"}
    features = datasets.Features({"image": datasets.Image(), **datasets.Dataset.from_list([others]).features})
    schema = features.arrow_schema
    output_dir.mkdir(parents=True, exist_ok=True)

    written, writer, in_shard, shard_bytes, pending = [], None, 0, 0, []

    def flush():
        if pending:
            writer.write_table(pa.Table.from_pylist(pending, schema=schema), row_group_size=ROW_GROUP)
            pending.clear()

    for position, index in enumerate(tqdm(order, desc="write shards")):
        cell = first if position == 0 else row(index)
        full = in_shard == rows_per_shard if rows_per_shard else in_shard and shard_bytes >= max_shard_size
        if writer is None or full:
            if writer is not None:
                flush()
                writer.close()
            written.append(output_dir / f".part-{len(written):05d}.parquet")
            writer, in_shard, shard_bytes = pq.ParquetWriter(written[-1], schema), 0, 0
        pending.append(cell)
        in_shard += 1
        shard_bytes += len(cell["image"]["bytes"])
        if len(pending) == ROW_GROUP:
            flush()
    flush()
    writer.close()
    final = [output_dir / f"train-{i:05d}-of-{len(written):05d}.parquet" for i in range(len(written))]
    for part, name in zip(written, final):
        os.replace(part, name)
    return final
