"""A run's store and input files as bytes, for a worker that may not share the driver's filesystem.

The driver packs a partial store (`pack`), the worker unpacks it into its own folder, runs there with the
run's files copied in (`with_files` points the config at the copies, and back before the store returns),
and the driver installs the store it gets back under OUT/runs/ atomically (`install`).
"""
from __future__ import annotations

import copy
import io
import os
import shutil
import sqlite3
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

FILE_FIELDS = (("space", "pool", "file"), ("instrument", "file"))
"""The files a replayed run reads (its pool, its recorded table): shipped with the task."""


def data_dir(store: Path) -> Path:
    return store.with_name(store.name + ".data")


def pack(store: Path) -> bytes:
    """The store (a consistent copy through SQLite's backup, its WAL included) and its data products, as a tar."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="aec-pack-") as tmp:
        copy_path = Path(tmp) / store.name
        src = sqlite3.connect("file:" + urllib.parse.quote(str(store.resolve())) + "?mode=ro", uri=True)
        dst = sqlite3.connect(copy_path)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            tar.add(copy_path, arcname=store.name)
            if data_dir(store).is_dir():
                tar.add(data_dir(store), arcname=data_dir(store).name)
    return buf.getvalue()


def unpack(blob: bytes, folder: Path) -> None:
    """Extract a `pack` into `folder` (paths outside it, links and devices refused)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")


def install(blob: bytes, target: Path) -> None:
    """Put a store that came back from a worker at `target`: unpacked beside it, its data products moved in,
    the old store's WAL removed (it belongs to the old file), then the store renamed over the old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        unpack(blob, staging)
        new_db = staging / target.name
        if not new_db.is_file():
            raise ValueError(f"the store that came back holds no {target.name}")
        with open(new_db, "rb+") as fh:
            os.fsync(fh.fileno())
        new_data, old_data = data_dir(new_db), data_dir(target)
        if new_data.is_dir():
            if old_data.exists():
                os.replace(old_data, staging / "replaced.data")
            os.replace(new_data, old_data)
        if target.with_name(target.name + "-wal").exists():
            _checkpoint(target)  # a crash before the rename below then leaves the old store whole, not its WAL lost
        for suffix in ("-wal", "-shm"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        os.replace(new_db, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checkpoint(store: Path) -> None:
    """Fold a store's WAL into its file (the caller holds the writer lock), so that removing the WAL loses nothing."""
    db = sqlite3.connect(str(store))
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()


def files_of(config: dict[str, Any], base_dir: str) -> dict[str, Path]:
    """The config's file settings (as written) and where they are on this machine."""
    out = {}
    for path in FILE_FIELDS:
        value = _get(config, path)
        if isinstance(value, str):
            p = Path(value).expanduser()
            out[value] = p if p.is_absolute() else Path(base_dir) / p
    return out


def with_files(config: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """A copy of `config` whose file settings named in `mapping` are replaced by their mapped paths."""
    out = copy.deepcopy(config)
    for path in FILE_FIELDS:
        value = _get(out, path)
        if isinstance(value, str) and value in mapping:
            _get(out, path[:-1])[path[-1]] = mapping[value]
    return out


def retarget(store: Path, mapping: dict[str, str], meta_keys: tuple[str, ...]) -> None:
    """Rewrite the file settings in the store's stored config ('config', and 'config' inside each of `meta_keys`)."""
    from controller.store import Store

    with Store(store, writer=True) as st:
        st.set_meta("config", with_files(st.config(), mapping))
        for key in meta_keys:
            meta = st.get_meta(key)
            if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
                st.set_meta(key, {**meta, "config": with_files(meta["config"], mapping)})


def _get(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


