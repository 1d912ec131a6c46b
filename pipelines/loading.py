"""Where weights come from and which files may be loaded: the one home of two rules that loading code everywhere in
sculpt (pipelines, training's pretrained parts, checkpoints, the Hub push) must agree on.

1. Hub id or local path? `looks_like_path` (what can only be a path) and `is_hub_id` (what will be fetched from the
   Hub), by huggingface_hub's own repo-id rule.
2. Pickle-only weights? A pickle (`*.bin`, `*.ckpt`, ...) can run arbitrary code when it is loaded; safetensors
   cannot. `pickle_only(names)` says which of one model's weight files are pickles that would be loaded because no
   safetensors file of the same variant stands beside them. Every caller decides what to do about it (refuse, or
   allow on the user's opt-in), but all of them classify files with these two lists.

Imports only the standard library (and huggingface_hub lazily): the sampling CLI checks its arguments with it
before torch is imported, and pipelines/portable.py inlines it into the code that saved folders ship.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# Weight files by format. `.pkl` and `.pt`/`.pth` are torch pickles too; accelerate writes `.pkl` RNG states.
SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".bin.index.json", ".ckpt", ".pt", ".pth", ".pkl")


def is_repo_id(value: str) -> bool:
    """Whether `value` is a valid Hub repo id, "name" or "namespace/name", by huggingface_hub's own rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def looks_like_path(value: str) -> bool:
    """What cannot be a Hub id, so can only be a local path: absolute or explicitly relative ("./x", "~/x"), more
    than one "/", or not a valid repo name."""
    return value.startswith((".", "/", "~")) or not is_repo_id(value)


def is_hub_id(value: str | None) -> bool:
    """Whether `value` names a Hub repo rather than a local folder: a valid repo id that is not an existing path
    here (a relative path that exists is local, as `from_pretrained` reads it)."""
    return bool(value) and not Path(value).expanduser().exists() and not looks_like_path(value)


def weight_variant(name: str) -> str | None:
    """The variant of a weight file: "diffusion_pytorch_model.fp16.safetensors" → "fp16";
    "model-00001-of-00002.safetensors" → None. Not a weight file → None."""
    for suffix in sorted(SAFE_SUFFIXES + PICKLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem.rpartition(".")[2] if "." in stem else None
    return None


def safetensors_of(names: Iterable[str], variant: str | None = None) -> list[str]:
    """The safetensors weight files among `names` for `variant` (None: the files without a variant)."""
    return sorted(n for n in names if n.endswith(SAFE_SUFFIXES) and weight_variant(n) == variant)


def pickles_of(names: Iterable[str], variant: str | None = None) -> list[str]:
    """The pickled weight files among `names` for `variant` (None: the files without a variant)."""
    return sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) and weight_variant(n) == variant)


def pickle_only(names: Iterable[str], variant: str | None = None) -> list[str]:
    """The pickle files among `names`, the weight files of ONE model, that a loader would read for `variant`
    because no safetensors file of that variant is there; [] when safetensors are there or there is no pickle."""
    names = list(names)
    return [] if safetensors_of(names, variant) else pickles_of(names, variant)


def folder_pickle_only(folder: str | Path, variant: str | None = None) -> list[str]:
    """`pickle_only` of the files directly in `folder` (a model folder written by `save_pretrained`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return pickle_only((p.name for p in folder.iterdir() if p.is_file()), variant)
