"""A conversion cache that never serves garbage: verified manifests and atomic swaps.

`ftkit.models` converts the embedded GGUF model into a safetensors directory
once. This module makes that safe to interrupt and safe to trust:

- the conversion writes into a private temporary directory and only a finished,
  hashed result is renamed into place, so a crash or Ctrl-C mid-conversion
  leaves no directory that looks complete;
- a manifest records every file's size and SHA-256 and the source it came
  from; each later load re-hashes the files and rebuilds on any mismatch
  (a truncated file, a flipped byte, a deleted tokenizer, a new source).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

MANIFEST = "ftkit-manifest.json"
MANIFEST_VERSION = 1


def cache_root() -> Path:
    """Where ftkit keeps converted models: $FTKIT_CACHE, else ~/.cache/ftkit."""
    return Path(os.environ.get("FTKIT_CACHE") or Path.home() / ".cache" / "ftkit")


def file_sha256(path: Path, chunk_size: int = 1 << 22) -> str:
    """The SHA-256 hex digest of a file, read in 4 MiB chunks.

    A process hashes a file once: while its size, modification time and inode stay the
    same, the digest is remembered (`_HASHED`). Every 4-bit load of the embedded model
    verifies its conversion (about 640 MB hashed, 0.37 s a load); notebook 05 loads it 10
    times. A file written again, or replaced, is hashed again."""
    status = os.stat(path)
    seen = (str(Path(path).resolve()), status.st_size, status.st_mtime_ns, status.st_ino,
            status.st_dev)  # fmt: skip
    if seen in _HASHED:
        return _HASHED[seen]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    _HASHED[seen] = digest.hexdigest()
    return _HASHED[seen]


_HASHED: dict[tuple, str] = {}  # file_sha256's digests: (path, size, mtime, inode, device)


def describe_source(source: Path) -> dict:
    """What the cache was built from: the source file's name, size and hash."""
    return {"name": source.name, "size": source.stat().st_size, "sha256": file_sha256(source)}


def write_manifest(directory: Path, source: Path, seconds: float) -> dict:
    """Hash every file in `directory` and write the manifest next to them."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "version": MANIFEST_VERSION,
        "source": describe_source(source),
        "files": files,
        "convert_seconds": round(seconds, 1),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_cache(directory: Path, source: Path) -> list[str]:
    """List what is wrong with a cached conversion (an empty list means it is sound)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing (conversion never finished)"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files, recorded_source = manifest["files"], manifest["source"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{manifest_path} is unreadable: {error}"]
    problems = []
    if manifest.get("version") != MANIFEST_VERSION:
        problems.append(f"manifest version {manifest.get('version')} != {MANIFEST_VERSION}")
    if recorded_source != describe_source(source):
        problems.append(f"built from a different {source.name} than the one installed now")
    for name, expected in files.items():
        problems += _check_file(directory / name, expected)
    return problems


def _check_file(path: Path, expected: dict) -> list[str]:
    if not path.is_file():
        return [f"{path.name} is missing"]
    size = path.stat().st_size
    if size != expected["size"]:
        return [f"{path.name} has {size} bytes, expected {expected['size']}"]
    if file_sha256(path) != expected["sha256"]:
        return [f"{path.name} is corrupt (SHA-256 differs from the manifest)"]
    return []


def ensure_converted(
    target: Path,
    source: Path,
    convert: Callable[[Path, Path], None],
    rebuild: bool = False,
) -> Path:
    """Return `target` holding a verified conversion of `source`, (re)building it if needed."""
    target = Path(target)
    if target.exists() and not rebuild:
        problems = verify_cache(target, source)
        if not problems:
            return target
        warnings.warn(
            f"The model cache at {target} is damaged ({'; '.join(problems)}). "
            "Rebuilding it from the original file.",
            stacklevel=2,
        )
    _build(target, source, convert)
    return target


def _build(target: Path, source: Path, convert: Callable[[Path, Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(target)
    scratch = target.parent / f".{target.name}.building-{os.getpid()}-{time.time_ns()}"
    try:
        started = time.perf_counter()
        scratch.mkdir()
        convert(source, scratch)
        write_manifest(scratch, source, time.perf_counter() - started)
        _swap_into_place(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_abandoned_builds(target: Path) -> list[Path]:
    """Delete scratch folders left by conversions whose process died (e.g. killed with SIGKILL)."""
    removed = []
    for scratch in target.parent.glob(f".{target.name}.*-*-*"):
        pid = int(scratch.name.split("-")[-2]) if scratch.name.split("-")[-2].isdigit() else 0
        if not _process_alive(pid):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    return removed


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _swap_into_place(scratch: Path, target: Path) -> None:
    """Rename the finished build over `target`; the old copy is moved aside, then deleted."""
    if target.exists():
        retired = target.parent / f".{target.name}.retired-{os.getpid()}-{time.time_ns()}"
        target.rename(retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        scratch.rename(target)
    except OSError:
        # Another process finished its own build first; theirs is as good as ours.
        if not (target / MANIFEST).is_file():
            raise
