"""Build a built-in dataset once into a cache folder named by its options, and find it there on later calls.

The folder is built under a temporary name in the same cache folder and renamed into place only when complete, so a
build killed halfway leaves a `.tmp-*` folder that no later call mistakes for a dataset (the next build of the same
options on the same host removes it once its process is gone). Two processes building the same options at once (the ranks of a DDP run) both build; the
first rename wins and the other discards its copy: the copies are byte-identical, so it makes no difference which.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUILD_RECORD = "build.json"  # options and source versions, written into every built folder; also the cache key


def build_record_json(record: dict[str, Any]) -> str:
    """The one serialisation of a build record: sorted keys, so the same options give the same bytes and key."""
    return json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def cached_build(cache_dir: str | Path, prefix: str, record: dict[str, Any], build: Callable[[Path], Any]) -> Path:
    """The folder `cache_dir/<prefix>-<hash of record>`, built by `build(folder)` if it is not there yet.

    `build` must write `record` as BUILD_RECORD (via `build_record_json`) into the folder it is given; the folder is
    only accepted when that file holds exactly `record`, which catches a hash collision or a folder left by hand."""
    cache_dir = Path(cache_dir).expanduser()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise NotADirectoryError(f"`cache_dir`: {str(cache_dir)!r} exists and is not a folder.")
    cache_dir.mkdir(parents=True, exist_ok=True)
    text = build_record_json(record)
    final = cache_dir / f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if _is_complete(final, text):
        return final
    if final.exists():
        raise FileExistsError(
            f"{str(final)!r} exists but its {BUILD_RECORD} does not match these options; remove it and build again."
        )
    _remove_stale_builds(cache_dir, final.name)
    prefix_here = f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}-"
    temporary = Path(tempfile.mkdtemp(prefix=prefix_here, dir=cache_dir))
    try:
        build(temporary)
        if not _is_complete(temporary, text):
            raise RuntimeError(f"the build into {str(temporary)!r} did not write the expected {BUILD_RECORD}")
        os.chmod(temporary, 0o755)  # mkdtemp makes it 0o700; a shared cache should be readable like any folder
        try:
            os.rename(temporary, final)
        except OSError:
            if not _is_complete(final, text):  # not another process's identical build: a real error
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already after a successful rename
    return final


def _remove_stale_builds(cache_dir: Path, name: str) -> None:
    """Remove the temporary folders of killed builds of `name` on this host (their process is gone); another live
    process's build in progress is left alone."""
    host = socket.gethostname()
    for stale in cache_dir.glob(f".tmp-{name}-{host}-*"):
        pid = stale.name[len(f".tmp-{name}-{host}-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _is_complete(folder: Path, text: str) -> bool:
    record = folder / BUILD_RECORD
    return record.is_file() and record.read_text(encoding="utf-8") == text


def dataset_fingerprint(folder: str | Path) -> str:
    """sha256 over every file of a built folder, names and bytes, in name order: equal for byte-identical builds."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
