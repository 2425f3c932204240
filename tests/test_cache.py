"""The conversion cache: atomic builds, verification, and rebuilding what is damaged."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftkit import cache
from ftkit.cache import MANIFEST, ensure_converted, remove_abandoned_builds, verify_cache
from ftkit.models import embedded_cache_dir, embedded_model_dir, find_embedded_gguf


def write_two_files(source: Path, out_dir: Path) -> None:
    """A small stand-in conversion: copies the source and writes a config."""
    (out_dir / "weights.bin").write_bytes(source.read_bytes() * 3)
    (out_dir / "config.json").write_text('{"layers": 2}')


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.gguf"
    path.write_bytes(os.urandom(4096))
    return path


def test_build_writes_manifest_that_verifies(tmp_path, source):
    target = ensure_converted(tmp_path / "cache" / "m", source, write_two_files)
    manifest = json.loads((target / MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin", "config.json"}
    assert manifest["source"]["size"] == 4096
    assert verify_cache(target, source) == []


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "weights.bin").write_bytes(b"short"), "weights.bin has 5 bytes"),
        (lambda d: _flip_last_byte(d / "weights.bin"), "weights.bin is corrupt"),
        (lambda d: (d / MANIFEST).unlink(), "conversion never finished"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "unreadable"),
    ],
    ids=["file-missing", "truncated", "bit-flip", "no-manifest", "bad-manifest"],
)
def test_damage_is_detected_and_rebuilt(tmp_path, source, damage, expected):
    target = ensure_converted(tmp_path / "m", source, write_two_files)
    damage(target)
    assert any(expected in problem for problem in verify_cache(target, source))
    with pytest.warns(UserWarning, match="damaged"):
        ensure_converted(target, source, write_two_files)
    assert verify_cache(target, source) == []


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_new_source_triggers_rebuild(tmp_path, source):
    target = ensure_converted(tmp_path / "m", source, write_two_files)
    source.write_bytes(os.urandom(4096))
    assert "different source.gguf" in verify_cache(target, source)[0]
    with pytest.warns(UserWarning):
        ensure_converted(target, source, write_two_files)
    assert (target / "weights.bin").read_bytes() == source.read_bytes() * 3


def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, source):
    def interrupted(src: Path, out_dir: Path) -> None:
        (out_dir / "weights.bin").write_bytes(b"half a file")
        raise KeyboardInterrupt

    target = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        ensure_converted(target, source, interrupted)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [source]  # no scratch folder left behind
    ensure_converted(target, source, write_two_files)
    assert verify_cache(target, source) == []


def test_abandoned_scratch_of_dead_process_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    scratch = tmp_path / f".m.building-{dead.stdout.strip()}-123"
    alive = tmp_path / f".m.building-{os.getpid()}-456"
    scratch.mkdir()
    alive.mkdir()
    assert remove_abandoned_builds(tmp_path / "m") == [scratch]
    assert alive.exists()


def test_real_model_killed_mid_conversion_then_rebuilt(tmp_path):
    """SIGKILL a real conversion of the embedded model; the next load converts cleanly."""
    env = {**os.environ, "FTKIT_CACHE": str(tmp_path)}
    code = "from ftkit.models import embedded_model_dir; embedded_model_dir()"
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = tmp_path / "models" / "smollm2-135m-instruct"
    deadline = time.time() + 120
    while not list(target.parent.glob(".*building*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # let the conversion get under way
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists(), "a killed conversion must not leave a cache that looks complete"
    os.environ["FTKIT_CACHE"] = str(tmp_path)
    try:
        rebuilt = embedded_model_dir()
    finally:
        del os.environ["FTKIT_CACHE"]
    assert verify_cache(rebuilt, find_embedded_gguf()) == []
    assert not list(target.parent.glob(".*building*"))


def test_corrupt_real_cache_is_rebuilt(tmp_path, embedded_dir, monkeypatch):
    """Flip one byte in the middle of a copy of the converted weights: the load rebuilds."""
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    copy = embedded_cache_dir()
    copy.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(embedded_dir), str(copy)], check=True)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.warns(UserWarning, match="model.safetensors is corrupt"):
        rebuilt = embedded_model_dir()
    assert verify_cache(rebuilt, find_embedded_gguf()) == []


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    """Every load verifies the conversion: a process reads an unchanged file once."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = cache.file_sha256(path)
    read = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: read.append(a[0]) or real_open(*a, **k))
    assert cache.file_sha256(path) == first and read == []
    monkeypatch.undo()
    _flip_last_byte(path)  # written again: hashed again
    assert cache.file_sha256(path) != first
    assert cache.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
