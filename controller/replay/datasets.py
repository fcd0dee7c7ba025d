"""Recorded data sets (CSV, TSV, Parquet) read into a pool: input columns, objective columns, clean rows.

Each problem a scientist's spreadsheet can carry gets an error naming the file, the option and what was
expected, or is handled and reported: a UTF-8 byte-order mark (stripped), a UTF-16 file (refused), a `;`
separator with decimal commas, quoted or padded headers, text in a numeric column, missing values
(reported by file line, then dropped or refused) and repeated inputs (grouped as Liang et al. 2021 do).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from controller.errors import UserError

Duplicates = Literal["mean", "keep", "first"]
Missing = Literal["drop", "refuse"]
SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
REPLICATE = "replicate"


@dataclass
class Dataset:
    """A pool ready to replay: one row per candidate, its inputs and its recorded objective values."""

    name: str
    path: Path
    inputs: list[str]
    X: np.ndarray  # rows x inputs
    Y: dict[str, np.ndarray]  # objective column -> rows
    raw_rows: int
    dropped_lines: list[int] = field(default_factory=list)  # file line numbers of rows with missing values
    grouped: int = 0  # rows merged into another row with the same inputs

    @property
    def rows(self) -> int:
        return len(self.X)

    def columns(self) -> dict[str, np.ndarray]:
        """Inputs then objectives, as columns (the pool table)."""
        return {**{n: self.X[:, j] for j, n in enumerate(self.inputs)}, **self.Y}

    def notes(self) -> list[str]:
        """What loading changed, in words, for the replay's log and report."""
        out = []
        if self.dropped_lines:
            shown = ", ".join(map(str, self.dropped_lines[:12])) + (" ..." if len(self.dropped_lines) > 12 else "")
            out.append(f"{self.path.name}: {len(self.dropped_lines)} row(s) with missing values dropped (lines {shown})")
        if self.grouped:
            out.append(f"{self.path.name}: {self.grouped} row(s) repeat another row's inputs and were grouped")
        return out


def load_dataset(path: str | Path, inputs: list[str], objectives: list[str], *, name: str | None = None,
                 duplicates: Duplicates = "mean", missing: Missing = "drop") -> Dataset:
    """Read `path` and keep `inputs` + `objectives` as numbers; UserError (one line) for what cannot be used."""
    path = Path(path)
    frame = _read_frame(path)
    where = str(path)
    if not len(frame.columns):
        raise UserError(f"{where}: the file is empty; expected a header line and data rows")
    if not len(frame):
        raise UserError(f"{where}: no data rows below the header ({', '.join(map(str, frame.columns))})")
    _check_columns(where, frame, inputs, "--inputs")
    _check_columns(where, frame, objectives, "--objective")
    clash = sorted(set(inputs) & set(objectives))
    if clash:
        raise UserError(f"{where}: --objective: {', '.join(clash)} is also an input; an objective must be another column")
    used = list(dict.fromkeys(inputs + objectives))
    values = {c: _numeric(where, frame, c, "--inputs" if c in inputs else "--objective") for c in used}
    lines = np.arange(len(frame)) + 2  # line 1 is the header
    bad = np.zeros(len(frame), dtype=bool)
    for v in values.values():
        bad |= ~np.isfinite(v)
    if bad.any():
        listed = ", ".join(map(str, lines[bad][:12])) + (" ..." if bad.sum() > 12 else "")
        if missing == "refuse":
            raise UserError(f"{where}: {int(bad.sum())} row(s) have missing or non-finite values (lines {listed}); "
                            "fill them in, or pass --missing drop")
        if bad.all():
            raise UserError(f"{where}: every row has a missing value in {', '.join(used)}")
    X = np.stack([values[c][~bad] for c in inputs], axis=1)
    Y = {c: values[c][~bad] for c in objectives}
    X, Y, grouped, inputs_out = _group(X, Y, list(inputs), duplicates)
    return Dataset(name or path.stem, path, inputs_out, X, Y, raw_rows=len(frame),
                   dropped_lines=[int(v) for v in lines[bad]], grouped=grouped)


def _read_frame(path: Path):
    """The file as a pandas frame of text cells (numbers are parsed later, per column, with row numbers)."""
    import pandas as pd

    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a .csv, .tsv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: suffix {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)}")
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
            raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {_first_line(exc)})") from None
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                        "save it as CSV UTF-8 and try again")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark, as Excel writes, is dropped
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                        "save it as CSV UTF-8") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; expected a header line and data rows")
    sep, decimal = _dialect(text, suffix)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, decimal=decimal, dtype=str, keep_default_na=False,
                            skipinitialspace=True, quotechar='"')
    except Exception as exc:  # noqa: BLE001 - pandas' parser errors name the line
        raise UserError(f"{path}: cannot be read as {'tab' if sep == chr(9) else repr(sep)}-separated text "
                        f"({_first_line(exc)})") from None
    frame.columns = [str(c).strip().strip('"').strip() for c in frame.columns]
    frame.attrs["decimal"] = decimal
    return frame


def _dialect(text: str, suffix: str) -> tuple[str, str]:
    """(separator, decimal mark): tabs for .tsv; for .csv the header's separator, `;` meaning European decimals."""
    if suffix == ".tsv":
        return "\t", "."
    header = next(iter(csv.reader([text.splitlines()[0]], delimiter="\x00")))[0]
    counts = {s: header.count(s) for s in (",", ";", "\t")}
    sep = max(counts, key=lambda s: counts[s]) if any(counts.values()) else ","
    decimal = "," if sep == ";" and re.search(r"\d,\d", text) else "."
    return sep, decimal


def _check_columns(where: str, frame, wanted: list[str], option: str) -> None:
    have = [str(c) for c in frame.columns]
    missing = [c for c in wanted if c not in have]
    if missing:
        near = [h for h in have if h.lower() in {m.lower() for m in missing}]
        hint = f" (did you mean {', '.join(near)}? names are case-sensitive)" if near else ""
        raise UserError(f"{where}: {option}: no column {', '.join(map(repr, missing))}; "
                        f"the file has {', '.join(map(repr, have))}{hint}")


def _numeric(where: str, frame, column: str, option: str) -> np.ndarray:
    """A column as floats, missing cells as NaN; text that is not a number is an error naming its line."""
    import pandas as pd

    col = frame[column]
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=float)
    text = col.astype(str).str.strip()
    if frame.attrs.get("decimal") == ",":
        text = text.str.replace(",", ".", regex=False)
    blank = text.isin(["", "nan", "NaN", "NA", "N/A", "null", "None", "-"])
    numbers = pd.to_numeric(text.where(~blank), errors="coerce")
    wrong = numbers.isna() & ~blank
    if wrong.any():
        i = int(np.flatnonzero(wrong.to_numpy())[0])
        raise UserError(f"{where}: {option}: column {column!r} is not numeric (line {i + 2}: {col.iloc[i]!r}); "
                        "inputs and objectives must be numbers")
    return numbers.to_numpy(dtype=float)


def _group(X: np.ndarray, Y: dict[str, np.ndarray], inputs: list[str], duplicates: Duplicates
           ) -> tuple[np.ndarray, dict[str, np.ndarray], int, list[str]]:
    """Rows with equal inputs: 'mean' of their unique objective values (Liang et al. 2021), 'first', or 'keep'
    (each replicate its own pool row, told apart by a `replicate` input numbering 0, 1, ...)."""
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    grouped = int(len(X) - len(first))
    if not grouped:
        return X, Y, 0, inputs
    if duplicates == "keep":
        replicate = np.zeros(len(X))
        seen: dict[int, int] = {}
        for i, g in enumerate(inverse):
            replicate[i] = seen.get(int(g), 0)
            seen[int(g)] = int(replicate[i]) + 1
        name = REPLICATE if REPLICATE not in inputs else f"_{REPLICATE}"
        return np.column_stack([X, replicate]), Y, 0, inputs + [name]
    order = np.sort(first)  # groups in the order they first appear in the file
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first)] = np.arange(len(first))
    if duplicates == "first":
        return X[order], {k: v[order] for k, v in Y.items()}, grouped, inputs
    Yg = {}
    for k, v in Y.items():
        out = np.empty(len(first))
        for g in range(len(first)):
            out[rank[g]] = np.unique(v[inverse == g]).mean()
        Yg[k] = out
    return X[order], Yg, grouped, inputs


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
