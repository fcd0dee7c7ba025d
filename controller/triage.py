"""Offline triage: score every event of an array file against a reference set and keep the novel ones.

`triage(reference, input, keep, out)` learns the reference events with an autoencoder
(`policies.selection.NoveltyDetector`), streams the input in chunks (a memory-mapped .npy, an .npz
member read sequentially, or HDF5 slices), so input files larger than memory work, and writes to
`out/`: `scores.npy` (one float per input row, higher is more novel), `pvalues.npy` (conformal
p-values against held-out reference events) and `kept.npy` (the kept row indices, sorted): the
novel rows (p < level) first, most novel first, then a stratified sample of the rest, never more
than `keep` of the rows. `load_array` reads a reference set for a campaign's `selection:` section.
"""
from __future__ import annotations

import logging
import math
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from controller.errors import UserError
from policies.selection import Budget, DetectorOptions, NoveltyDetector, SelectionError, select

logger = logging.getLogger(__name__)

SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
_PREFERRED = ("data", "X", "x", "events", "arr_0")
MAX_REFERENCE_ROWS = 100_000


class ArrayFile:
    """One array (rows = events) in a .npy, .npz or HDF5 file, read in row chunks, never whole.

    rows: number of events; shape: one event's shape; `role` names the file in error messages.
    """

    def __init__(self, path: Path | str, dataset: str | None = None, role: str = "input"):
        self.path = Path(path)
        self.role = role
        if not self.path.exists():
            raise UserError(f"{role} file {self.path} does not exist")
        if not self.path.is_file():
            raise UserError(f"{role} file {self.path} is not a file")
        self.suffix = self.path.suffix.lower()
        if self.suffix not in SUFFIXES:
            raise UserError(f"{role} file {self.path}: expected a .npy, .npz or .h5/.hdf5 array file, got {self.suffix or 'no extension'!r}")
        self._h5 = None
        self._zip: zipfile.ZipFile | None = None
        try:
            if self.suffix == ".npy":
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
                full_shape, dtype = self._array.shape, self._array.dtype
            elif self.suffix == ".npz":
                full_shape, dtype = self._open_npz(dataset)
            else:
                full_shape, dtype = self._open_h5(dataset)
            if dtype.kind not in "fiub":
                raise UserError(f"{role} file {self.path}: expected a numeric array, got dtype {dtype}")
            if len(full_shape) == 0:
                raise UserError(f"{role} file {self.path}: expected an array with one row per event, got a scalar")
        except UserError:
            self.close()
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            self.close()
            raise UserError(f"{role} file {self.path} could not be read as {self.suffix}: {exc}") from None
        self.rows = int(full_shape[0])
        self.shape = tuple(int(s) for s in full_shape[1:]) or (1,)
        self._flat_row = len(full_shape) == 1

    def _open_npz(self, dataset: str | None) -> tuple[tuple[int, ...], np.dtype]:
        self._zip = zipfile.ZipFile(self.path)
        names = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]
        self._member = self._choose(names, dataset) + ".npy"
        with self._zip.open(self._member) as fp:
            shape, fortran, dtype = self._read_header(fp)
        if fortran and len(shape) > 1:
            raise UserError(f"{self.role} file {self.path}: array {self._member[:-4]!r} is in Fortran order; save it C-ordered to stream it")
        return shape, dtype

    @staticmethod
    def _read_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fp)
        return np.lib.format.read_array_header_2_0(fp)

    def _open_h5(self, dataset: str | None) -> tuple[tuple[int, ...], np.dtype]:
        import h5py

        self._h5 = h5py.File(self.path, "r")
        names: list[str] = []
        self._h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        self._array = self._h5[self._choose(names, dataset)]
        return tuple(self._array.shape), self._array.dtype

    def _choose(self, names: list[str], dataset: str | None) -> str:
        if dataset is not None:
            if dataset not in names:
                raise UserError(f"{self.role} file {self.path} has no array {dataset!r}; it holds {', '.join(names) or 'none'}")
            return dataset
        if len(names) == 1:
            return names[0]
        for name in _PREFERRED:
            if name in names:
                return name
        if not names:
            raise UserError(f"{self.role} file {self.path} holds no arrays")
        raise UserError(f"{self.role} file {self.path} holds several arrays ({', '.join(names)}); name one as the data set")

    def chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows (m, *shape)) for consecutive chunks of at most chunk_rows rows."""
        chunk_rows = max(1, int(chunk_rows))
        if self._zip is not None:
            yield from self._npz_chunks(chunk_rows)
            return
        for start in range(0, self.rows, chunk_rows):
            block = np.asarray(self._array[start : start + chunk_rows])
            yield start, block.reshape(len(block), *self.shape)

    def _npz_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        assert self._zip is not None
        with self._zip.open(self._member) as fp:
            _, _, dtype = self._read_header(fp)
            row_bytes = dtype.itemsize * math.prod(self.shape)
            for start in range(0, self.rows, chunk_rows):
                m = min(chunk_rows, self.rows - start)
                raw = fp.read(m * row_bytes)
                if len(raw) != m * row_bytes:
                    raise UserError(f"{self.role} file {self.path}: array ends after {start} rows, its header says {self.rows}")
                yield start, np.frombuffer(raw, dtype=dtype).reshape(m, *self.shape)

    def sample(self, max_rows: int, seed: int = 0, chunk_rows: int = 65536) -> np.ndarray:
        """All rows when there are at most max_rows, else a uniform random subset of max_rows rows."""
        if self.rows <= max_rows:
            picks = None
        else:
            picks = np.sort(np.random.default_rng(seed).choice(self.rows, max_rows, replace=False))
        parts = []
        for start, block in self.chunks(chunk_rows):
            if picks is None:
                parts.append(np.array(block))
            else:
                lo, hi = np.searchsorted(picks, [start, start + len(block)])
                parts.append(np.array(block[picks[lo:hi] - start]))
        return np.concatenate(parts) if parts else np.zeros((0, *self.shape))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_array(path: Path | str, dataset: str | None = None, max_rows: int | None = None, seed: int = 0,
               role: str = "reference") -> np.ndarray:
    """Read an array file's rows (a random subset of max_rows when it has more); UserError names what is wrong."""
    with ArrayFile(path, dataset, role) as f:
        return f.sample(max_rows or f.rows, seed)


def _progress(enabled: bool):
    """A started rich progress bar for the scoring pass (rows, rate and ETA), or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("triage"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                   TextColumn("{task.fields[rate]:,.0f} rows/s"), TimeRemainingColumn(), transient=True)
    bar.start()
    return bar


def triage(
    reference: Path,
    input: Path,
    keep: float,
    out: Path,
    *,
    level: float = 0.05,
    seed: int = 0,
    chunk_rows: int = 65536,
    progress: bool = True,
    dataset: str | None = None,
    sample_rate: float = 0.02,
    max_reference: int = MAX_REFERENCE_ROWS,
    options: DetectorOptions | None = None,
) -> dict[str, Any]:
    """Score `input` against `reference`, keep at most `keep` (a fraction) of its rows; see the module docstring.

    Returns a summary: rows, kept, novel (rows with p < level), novel_kept, threshold (the score
    above which a row is novel), level, seconds (total), rate (rows scored per second), and more.
    """
    t0 = time.perf_counter()
    reference, input, out = Path(reference), Path(input), Path(out)
    if not (0.0 < keep <= 1.0):
        raise UserError(f"keep: expected a fraction of the rows in (0, 1], got {keep}")
    if not (0.0 < level < 1.0):
        raise UserError(f"level: expected a p-value level in (0, 1), got {level}")
    with ArrayFile(reference, dataset, "reference") as ref, ArrayFile(input, dataset, "input") as inp:
        if ref.rows == 0:
            raise UserError(f"reference file {reference} holds no events (0 rows); expected known events to learn from")
        if ref.shape != inp.shape:
            raise UserError(f"input file {input} has events of shape {inp.shape}, but reference file {reference} has "
                            f"{ref.shape}; expected the same shape per row")
        known = ref.sample(max_reference, seed, chunk_rows)
        try:
            det = NoveltyDetector(options or DetectorOptions(progress="bar" if progress else "off"), seed=seed).fit(known)
        except SelectionError as exc:
            raise UserError(f"reference file {reference}: {exc}") from None
        t_fit = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        scores = np.lib.format.open_memmap(out / "scores.npy", mode="w+", dtype=np.float64, shape=(inp.rows,))
        pvalues = np.lib.format.open_memmap(out / "pvalues.npy", mode="w+", dtype=np.float64, shape=(inp.rows,))
        strata = np.zeros(inp.rows, dtype=np.int16)
        bar = _progress(progress)
        task = bar.add_task("score", total=inp.rows, rate=0.0) if bar is not None else None
        t1, chunks = time.perf_counter(), 0
        try:
            for start, block in inp.chunks(chunk_rows):
                s, z = det.score_with_latent(block)
                stop = start + len(block)
                scores[start:stop] = s
                pvalues[start:stop] = det.pvalues(s)
                strata[start:stop] = det.strata(z)
                chunks += 1
                if bar is not None:
                    bar.update(task, completed=stop, rate=stop / max(time.perf_counter() - t1, 1e-9))
                logger.debug("triage: scored rows %d-%d of %d", start, stop, inp.rows)
        finally:
            if bar is not None:
                bar.stop()
        t_score = time.perf_counter() - t1
        mask = select(pvalues, Budget(fraction=keep), level=level, scores=scores, strata=strata,
                      sample_rate=sample_rate, seed=seed)
        kept = np.flatnonzero(mask).astype(np.int64)
        np.save(out / "kept.npy", kept)
        novel = pvalues < level
        summary = {
            "rows": inp.rows,
            "kept": int(len(kept)),
            "novel": int(novel.sum()),
            "novel_kept": int((novel & mask).sum()),
            "threshold": det.threshold(level),
            "level": level,
            "keep": keep,
            "reference_rows": ref.rows,
            "trained_on": int(len(known)),
            "calibration_rows": int(len(det.calibration)),
            "architecture": det.arch.kind if det.arch else None,
            "chunks": chunks,
            "fit_seconds": round(t_fit, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "rate": inp.rows / max(t_score, 1e-9),
            "out": str(out),
        }
        scores.flush()
        pvalues.flush()
        del scores, pvalues
    logger.info("triage: %d rows, %d novel, %d kept, %.0f rows/s", summary["rows"], summary["novel"], summary["kept"], summary["rate"])
    return summary
