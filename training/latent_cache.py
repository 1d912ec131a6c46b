"""Latents (and caption embeddings) cached on disk: `cache_latents: true` with `latent_cache: disk`, built by
training itself or beforehand by `accelerate launch scripts/cache_latents.py --config ...`.

    key        everything that changes what is cached (`cache_key`): the data (datasets' fingerprint of a loaded
               dataset; a stream's shards, row counts and file sizes and times), the VAE's weights (sha256) and
               config, the dtype it runs in, resolution and buckets, flips, the resize filter, and with caption
               embeddings the text encoder's weights and config, the tokenizer and its max length. The cache lives in
               `<cache_dir>/sculpt-latents/<sha256 of the key>` (or `latent_cache_dir`, whose manifest must hold this
               key: another one is refused, naming what differs), so a stale cache is never used (sd-scripts #1413).
    shards     rows 0..R-1 of the dataset (a stream's in file order) in shards of `rows_per_shard`, shard k built
               by rank k mod N, each encoded in batches of the training batch size from its first row (the memory
               cache's batches, so the two hold the same bits), written to a temporary name and renamed when
               complete. A run killed mid-cache keeps its complete shards and builds the rest when started again.
    checks     before training, every shard is there, with its full size and a header naming this key and its rows:
               a missing, truncated or foreign shard is rebuilt, never trained on. Every row carries a CRC-32 of its
               bytes, checked whenever it is read: a shard damaged in place stops the run, naming it
               (`scripts/cache_latents.py --verify` finds and rebuilds such shards).
    views      the center crop of each image (a random crop is refused by the config: it would be frozen), and with
               `random_flip` also its mirror image, so each sample still draws its flip (`data.draw_view`) from its
               own generator, exactly as the uncached path does. What is cached is q(z | x), mean and std in float32:
               every step still samples z afresh from it.
    reading    training reads a sample's rows as its batch needs them (safetensors slices of at most two open
               shards), so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipelines.pipeline_latent_diffusion import encode_text

from .checkpoint import differences
from .config import BUILTIN_DATASETS
from .data import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    ImageCaptionDataset,
    draw_view,
    image_bucket_sizes,
    open_image,
    pick_caption,
    sample_generator,
)
from .errors import CacheDamagedError
from .run import wait_for_main_process
from .streaming import Stream

logger = get_logger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
EMPTY_CAPTION = "empty_caption.safetensors"  # the embedding of "" (caption dropout), once
# One shard is held in memory while it is built: 256 rows of SD-sized caption embeddings (77 × 768 float32) are 60 MB.
ROWS_PER_SHARD = 256
TEXT_BATCH = 64  # captions per text-encoder call, as the memory cache encodes them


# ---------------------------------------------------------------------------------------------------------------------
# The key
# ---------------------------------------------------------------------------------------------------------------------
def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes, bytes), in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _public_config(config) -> dict:
    """A model config as JSON values, without the keys that say where or with what it was saved."""
    items = config.to_dict().items() if hasattr(config, "to_dict") else dict(config).items()
    skip = ("_name_or_path", "transformers_version")
    return json.loads(json.dumps({k: v for k, v in items if not k.startswith("_") and k not in skip}, default=str))


def data_key(dataset) -> dict:
    """What identifies the rows: a loaded dataset by datasets' fingerprint (a content hash for one built in memory,
    the data files and their modification times for files) and size; a stream by its shards and row counts and,
    for local data, the name, size and modification time of every file of its folder."""
    if isinstance(dataset, Stream):
        files = hashlib.sha256()
        if dataset.root is not None:
            root = Path(dataset.root)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                stat = path.stat()
                files.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
        return {**dataset.record(), "files_sha256": files.hexdigest()}
    return {"fingerprint": dataset._fingerprint, "rows": len(dataset)}  # datasets' own, updated by every transform


def cache_key(config, dataset, vae, weight_dtype: torch.dtype, tokenizer=None, text_encoder=None,
              sizes: list[tuple[int, int]] | None = None) -> dict:  # fmt: skip
    """Everything that changes what the cache holds (see the module docstring). `tokenizer` and `text_encoder`
    when caption embeddings are cached too; `sizes` each row's bucket (bucketing only)."""
    text = None
    if tokenizer is not None:
        text = {
            "text_encoder_sha256": weights_digest(text_encoder),
            "text_encoder_config": _public_config(text_encoder.config),
            "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
            "max_length": tokenizer.model_max_length,
        }
    return {
        "format": CACHE_FORMAT,
        "data": data_key(dataset),
        "vae_sha256": weights_digest(vae),
        "vae_config": _public_config(vae.config),
        "dtype": str(weight_dtype),
        "resolution": config.resolution,
        "buckets_sha256": None if sizes is None else hashlib.sha256(json.dumps(sizes).encode()).hexdigest(),
        "flips": config.random_flip,
        "interpolation": config.image_interpolation_mode,
        "text": text,
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_folder(config, key: dict) -> Path:
    """`latent_cache_dir`, or `<cache_dir>/sculpt-latents/<first 16 hex digits of the key's sha256>`."""
    if config.latent_cache_dir:
        return Path(config.latent_cache_dir).expanduser()
    import datasets

    return Path(config.cache_dir or datasets.config.HF_DATASETS_CACHE) / "sculpt-latents" / key_digest(key)[:16]


def check_manifest(folder: Path, key: dict) -> dict | None:
    """The folder's manifest if it was built with `key`, None if there is none; another key is refused, naming what
    differs (only a `latent_cache_dir` given by hand can hold one)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"`latent_cache_dir`: cannot read {path}: {error}; remove the folder to rebuild it.") from error
    differ = differences(manifest.get("key", {}), key)
    if differ:
        details = "; ".join(f"{name}: {_short(there)} there, {_short(now)} now" for name, there, now in differ[:4])
        raise ValueError(
            f"`latent_cache_dir`: {str(folder)!r} holds a cache built with other settings ({details}). Remove it, "
            "or point latent_cache_dir elsewhere (unset, each set of settings gets its own folder)."
        )
    return manifest


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------------
def prepare_cache(config, dataset, vae, accelerator, weight_dtype: torch.dtype, tokenizer=None, text_encoder=None,
                  multiple: int | None = None, rows_per_shard: int | None = None,
                  verify: bool = False) -> LatentCache:  # fmt: skip
    """The disk cache of `dataset` for this config and these models, built where it is missing or damaged (every
    rank calls this; each builds its share of the shards). `tokenizer`/`text_encoder`: cache caption embeddings
    too; `multiple`: what bucket sides divide by (bucketing). `rows_per_shard` for a new cache (rounded to a
    multiple of the batch size); `verify`: check every row's CRC, not just the shards' headers. The ranks meet at
    run.wait_for_main_process's barrier, whose timeout allows for uneven shares."""
    sizes = None
    if not isinstance(dataset, Stream):  # each row at the bucket it trains at, for this launch's global batch
        sizes = image_bucket_sizes(dataset, config, config.train_batch_size * accelerator.num_processes, multiple)
    key = cache_key(config, dataset, vae, weight_dtype, tokenizer, text_encoder, sizes)
    folder = cache_folder(config, key)
    manifest = check_manifest(folder, key)
    batch_size = config.train_batch_size
    if manifest is None and accelerator.is_main_process:
        per_shard = max(1, round((rows_per_shard or ROWS_PER_SHARD) / batch_size)) * batch_size
        manifest = {"format": CACHE_FORMAT, "key": key, "key_sha256": key_digest(key), "rows": len(dataset),
                    "rows_per_shard": per_shard, "shards": -(-len(dataset) // per_shard),
                    "encode_batch_size": batch_size, "text": tokenizer is not None}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            empty = encode_text(tokenizer, text_encoder, [""], text_encoder.device).float().cpu()[0]
            _save_atomically({"embedding": empty.contiguous()}, folder / EMPTY_CAPTION, {})
        _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    # Every rank meets here whether or not it found a manifest: another rank may have read the one the main process
    # had just written, and a barrier only some ranks reach pairs with the next one (the others would check the
    # shards before the main process had built its share).
    wait_for_main_process(accelerator)
    manifest = json.loads((folder / MANIFEST).read_text())
    mine = range(accelerator.process_index, manifest["shards"], accelerator.num_processes)
    todo = []
    for shard in mine:
        problem = shard_problem(folder, shard, manifest, full=verify)
        if problem is not None:
            if problem != "missing":
                logger.warning(f"latent cache: rebuilding {shard_name(shard)}: {problem}")
            todo.append(shard)
    if accelerator.is_main_process:
        logger.info(f"latent cache in {folder}: {manifest['shards']} shard(s) of {manifest['rows_per_shard']} rows, "
                    f"{len(todo)} to build on the main process ({accelerator.num_processes} building)")  # fmt: skip
    views = _SourceRows(dataset, config, sizes)
    for shard in tqdm(todo, desc="cache latents", disable=not accelerator.is_local_main_process):
        _build_shard(folder, shard, manifest, views, vae, weight_dtype, tokenizer, text_encoder, batch_size)
        from .checkpoint import kill_point

        kill_point("cache", shard, accelerator.process_index)
    wait_for_main_process(accelerator)
    for shard in range(manifest["shards"]):  # every rank checks what the others built
        problem = shard_problem(folder, shard, manifest)
        if problem is not None:
            raise CacheDamagedError(f"latent cache {folder}: {shard_name(shard)} is {problem} after building it.")
    return LatentCache(folder, config)


class _SourceRows:
    """Rows of a loaded dataset or a stream, by source row, as the cache encodes them: the deterministic view
    (center crop, no flip), and the caption cell."""

    def __init__(self, dataset, config, sizes: list[tuple[int, int]] | None):
        self.dataset = dataset
        self.view = ImageCaptionDataset.from_config(None, config, train=False, sizes=sizes)
        self.view.center_crop, self.view.random_flip = True, False

    def rows(self, first: int, count: int):
        """(row, pixel values, caption cell) for rows first .. first + count - 1."""
        if isinstance(self.dataset, Stream):
            cells = _stream_rows(self.dataset, first, count)
        else:
            cells = zip(range(first, first + count), self.dataset.select(range(first, first + count)))
        for row, cell in cells:
            try:
                image = open_image(cell[IMAGE_COLUMN])
            except Exception as error:  # PIL raises many types
                where = self.dataset.where(row) if isinstance(self.dataset, Stream) else f"row {row}"
                raise ValueError(f"Cannot read the image of {where} while caching latents: {error}.") from error
            yield row, self.view.make_sample(image, cell[CAPTION_COLUMN], row)["pixel_values"], cell[CAPTION_COLUMN]


def _stream_rows(stream: Stream, first: int, count: int):
    """(source row, row) for rows first .. first + count - 1 of a stream, shards in file order."""
    import bisect

    shard = bisect.bisect_right(stream.offsets, first) - 1
    row, rows = first, stream.read(shard, first - stream.offsets[shard])
    while row < first + count:
        cell = next(rows, None)
        if cell is None:
            shard += 1
            rows = stream.read(shard)
            continue
        yield row, cell
        row += 1


@torch.no_grad()
def _build_shard(folder: Path, shard: int, manifest: dict, views: _SourceRows, vae, weight_dtype, tokenizer,
                 text_encoder, batch_size: int) -> None:  # fmt: skip
    per_shard = manifest["rows_per_shard"]
    first = shard * per_shard
    count = min(per_shard, manifest["rows"] - first)
    flips = manifest["key"]["flips"]
    rows = list(views.rows(first, count))
    # Batches of rows of one latent size (one bucket), in row order, `batch_size` at a time from the shard's first
    # row: the memory cache's batches when nothing is bucketed.
    shapes = []
    for _, pixels, _ in rows:
        if tuple(pixels.shape) not in shapes:
            shapes.append(tuple(pixels.shape))
    group_of = [shapes.index(tuple(pixels.shape)) for _, pixels, _ in rows]
    tensors, slot = {}, [0] * count
    names = ["mean", "std"] + (["mean_flipped", "std_flipped"] if flips else [])
    per_row: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for group in range(len(shapes)):
        members = [i for i in range(count) if group_of[i] == group]
        for position, i in enumerate(members):
            slot[i] = position
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            pixels = torch.stack([rows[i][1] for i in chunk]).to(vae.device, weight_dtype)
            outputs = [vae.encode(pixels).latent_dist]
            if flips:
                outputs.append(vae.encode(torch.flip(pixels, dims=[3])).latent_dist)
            for view, posterior in enumerate(outputs):
                mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
                for j, i in enumerate(chunk):
                    per_row[i][names[2 * view]], per_row[i][names[2 * view + 1]] = mean[j], std[j]
        for name in names:
            tensors[f"{name}.{group}"] = torch.stack([per_row[i][name] for i in members]).contiguous()
    cells = [caption if isinstance(caption, list) else [caption] for _, _, caption in rows]
    if tokenizer is not None:
        flat = [caption for captions in cells for caption in captions]
        embeddings = torch.cat([encode_text(tokenizer, text_encoder, flat[start : start + TEXT_BATCH],
                                            text_encoder.device).float().cpu()
                                for start in range(0, len(flat), TEXT_BATCH)])  # fmt: skip
        offsets = [0]
        for captions in cells:
            offsets.append(offsets[-1] + len(captions))
        tensors["text.embeddings"] = embeddings.contiguous()
        tensors["text.offsets"] = torch.tensor(offsets, dtype=torch.int64)
        for i in range(count):
            per_row[i]["text"] = embeddings[offsets[i] : offsets[i + 1]]
    tensors["group"] = torch.tensor(group_of, dtype=torch.int64)
    tensors["slot"] = torch.tensor(slot, dtype=torch.int64)
    tensors["crc"] = torch.tensor([row_crc(per_row[i]) for i in range(count)], dtype=torch.int64)
    metadata = {"key_sha256": manifest["key_sha256"], "shard": str(shard), "first_row": str(first),
                "rows": str(count), "captions": json.dumps(cells)}  # fmt: skip
    _save_atomically(tensors, folder / shard_name(shard), metadata)


def row_crc(parts: dict[str, torch.Tensor]) -> int:
    """CRC-32 of a row's tensors (mean, std, flipped ones, caption embeddings), in name order."""
    crc = 0
    for name in sorted(parts):
        crc = zlib.crc32(parts[name].contiguous().numpy().tobytes(), crc)
    return crc


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def shard_problem(folder: Path, shard: int, manifest: dict, full: bool = False) -> str | None:
    """None if shard `shard` is complete and belongs to this cache, else what is wrong ("missing", "truncated: ...",
    ...); `full` also checks every row's CRC."""
    path = folder / shard_name(shard)
    if not path.is_file():
        return "missing"
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
    except (OSError, ValueError) as error:
        return f"unreadable ({error})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size != 8 + length + end:
        return f"truncated ({path.stat().st_size} bytes, {8 + length + end} expected)"
    metadata = header.get("__metadata__", {})
    expected = {"key_sha256": manifest["key_sha256"], "shard": str(shard),
                "first_row": str(shard * manifest["rows_per_shard"])}  # fmt: skip
    if any(metadata.get(k) != v for k, v in expected.items()):
        return "from another cache"
    if full:
        reader = _Shard(path)
        for i in range(int(metadata["rows"])):
            if reader.row_crc(i) != reader.crc[i]:
                return f"damaged (row {i} does not match its CRC)"
    return None


def _save_atomically(tensors: dict, path: Path, metadata: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    save_file(tensors, str(temporary), metadata=metadata)
    _fsync(temporary)
    os.replace(temporary, path)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    temporary.write_text(text)
    _fsync(temporary)
    os.replace(temporary, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------
class _Shard:
    """One open shard: its small index tensors and caption lists in memory, the latents read slice by slice."""

    def __init__(self, path: Path):
        self.path = path
        self.file = safe_open(str(path), framework="pt")
        self.names = set(self.file.keys())
        self.group, self.slot, self.crc = (self.file.get_tensor(k).tolist() for k in ("group", "slot", "crc"))
        self.captions = json.loads(self.file.metadata()["captions"])
        self.offsets = self.file.get_tensor("text.offsets").tolist() if "text.offsets" in self.names else None

    def parts(self, i: int) -> dict[str, torch.Tensor]:
        group, slot = self.group[i], self.slot[i]
        parts = {name: self.file.get_slice(f"{name}.{group}")[slot : slot + 1][0]
                 for name in ("mean", "std", "mean_flipped", "std_flipped") if f"{name}.{group}" in self.names}
        if self.offsets is not None:
            parts["text"] = self.file.get_slice("text.embeddings")[self.offsets[i] : self.offsets[i + 1]]
        return parts

    def row_crc(self, i: int) -> int:
        return row_crc(self.parts(i))


class LatentCache:
    """A built cache, read row by row: `sample(row, epoch)` is what training draws for source row `row` in `epoch`:
    the mean and std of q(z | x) of its view (flipped or not, as the sample's generator draws it), its caption (one of
    several, drawn the same way) and that caption's embedding when they are cached. At most `open_shards` shards are
    open (memory-mapped) at once, so memory does not grow with the cache."""

    def __init__(self, folder: Path, config, open_shards: int = 2):
        self.folder = folder
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.seed, self.random_flip = config.seed, config.random_flip
        # The cache holds center crops; with a random crop (allowed only for the built-in datasets, drawn square at
        # `resolution`) the transform still draws the crop's top and left, so the sample's later draws match.
        self.center_crop = config.center_crop or config.dataset_name not in BUILTIN_DATASETS
        self.open_shards = open_shards
        self._shards: OrderedDict[int, _Shard] = OrderedDict()
        self.empty_embedding = None
        if self.manifest["text"]:
            with safe_open(str(folder / EMPTY_CAPTION), framework="pt") as f:
                self.empty_embedding = f.get_tensor("embedding")

    def __len__(self) -> int:
        return self.manifest["rows"]

    def __getstate__(self):  # data loader workers open their own shards
        return {**self.__dict__, "_shards": OrderedDict()}

    def _shard(self, shard: int) -> _Shard:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        opened = _Shard(self.folder / shard_name(shard))
        self._shards[shard] = opened
        while len(self._shards) > self.open_shards:
            self._shards.popitem(last=False)
        return opened

    def sample(self, row: int, epoch: int) -> dict:
        shard, i = divmod(row, self.manifest["rows_per_shard"])
        opened = self._shard(shard)
        parts = opened.parts(i)
        if row_crc(parts) != opened.crc[i]:
            raise CacheDamagedError(
                f"latent cache {self.folder}: row {i} of {shard_name(shard)} does not match its CRC (the file was "
                f"damaged after it was written). Rebuild it with scripts/cache_latents.py --config <this config> "
                f"--verify, then resume with resume_from_checkpoint=latest."
            )
        generator = sample_generator(self.seed, epoch, row)
        _, _, flip = draw_view(generator, self.center_crop, self.random_flip)
        cell = opened.captions[i]
        caption = pick_caption(cell if len(cell) > 1 else cell[0], generator)
        view = "_flipped" if flip else ""
        sample = {"latent_mean": parts[f"mean{view}"], "latent_std": parts[f"std{view}"], "caption": caption}
        if "text" in parts:
            sample["text_embedding"] = parts["text"][cell.index(caption)]
        return sample


class CachedSamples(torch.utils.data.Dataset):
    """A `LatentCache` as the torch dataset of a map-style loader (data.build_train_dataloader's `samples`)."""

    def __init__(self, cache: LatentCache):
        self.cache, self.epoch = cache, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        return self.cache.sample(index, self.epoch)


def cached_loader(cache: LatentCache, dataset, config, accelerator, multiple: int | None = None):
    """The training loader that reads `cache` instead of decoding images: the same order, buckets and split across
    processes as the loader of `dataset` (map-style, data.py, or streamed, streaming.py)."""
    from .data import build_train_dataloader
    from .streaming import StreamLoader

    if isinstance(dataset, Stream):
        return StreamLoader(dataset, config, accelerator.process_index, accelerator.num_processes,
                            accumulation=config.gradient_accumulation_steps, samples=cache)  # fmt: skip
    loader, _ = build_train_dataloader(dataset, config, num_processes=accelerator.num_processes, multiple=multiple,
                                       samples=CachedSamples(cache))  # fmt: skip
    return loader


def cache_for_config(config, rows_per_shard: int | None = None, verify: bool = False) -> LatentCache:
    """scripts/cache_latents.py: the disk cache a training run of `config` reads, built (each process its share) or
    checked. The frozen parts are built in train.py's order (tokenizer, seed, text encoder, VAE), on the same device
    and in the same dtype, so that parts initialised from the seed hash the same; any difference would show as
    another key, never as a stale cache."""
    from accelerate.utils import set_seed

    from . import run
    from .data import all_captions
    from .models import bucket_multiple, check_sources, freeze, load_text_encoder, load_tokenizer, load_vae
    from .validation import training_dtype

    accelerator = run.make_accelerator(config, Path(config.output_dir), script="scripts/cache_latents.py")
    check_sources(config)
    set_seed(config.seed)
    dataset, _ = run.train_data(config, accelerator, multiple=bucket_multiple(config))
    text = config.cache_text_embeddings and not config.train_text_encoder
    tokenizer = load_tokenizer(config, captions=None if config.is_pretrained("tokenizer") else all_captions(dataset))
    set_seed(config.seed)
    text_encoder = freeze(load_text_encoder(config, tokenizer))
    vae = freeze(load_vae(config))
    weight_dtype = training_dtype(accelerator)
    for module in [vae, text_encoder] if text else [vae]:
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)
    cache = prepare_cache(config, dataset, vae, accelerator, weight_dtype, *((tokenizer, text_encoder) if text else
                          (None, None)), multiple=bucket_multiple(config), rows_per_shard=rows_per_shard,
                          verify=verify)  # fmt: skip
    accelerator.end_training()
    return cache
