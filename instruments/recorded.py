"""A recorded data set (CSV, Parquet or .npz) as an instrument: measuring a setting looks up its row.

Used to replay a campaign or a data set against other policies: the space is the file's
parameter columns (a pool) and a measurement returns that row's metric columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from instruments.base import InstrumentError, Measurement


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV/TSV/Parquet/.npz table as arrays; ValueError says why a file cannot be read."""
    if not path.exists():
        raise ValueError(f"{path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ValueError(f"{path} has suffix {suffix!r}; expected .csv, .tsv, .parquet or .npz")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        import pandas as pd

        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - any parser failure is the file's problem
        raise ValueError(f"cannot read {path}: {exc}") from None
    return {str(c): frame[c].to_numpy() for c in frame.columns}


class RecordedInstrument:
    """Looks settings up in a table; `metrics` names the result columns (default: all not in `parameters`)."""

    def __init__(self, file: str | Path, parameters: list[str], metrics: list[str] | None = None,
                 base_dir: str | Path | None = None):
        path = Path(file)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            columns = read_columns(path)
        except ValueError as exc:
            raise InstrumentError(f"instrument.file: {exc}", retryable=False) from None
        missing = [p for p in parameters if p not in columns]
        if missing:
            raise InstrumentError(f"instrument.file: {path} lacks parameter columns {missing}", retryable=False)
        self.parameters = list(parameters)
        self.metric_names = list(metrics) if metrics else [
            k for k, v in columns.items() if k not in parameters and np.issubdtype(v.dtype, np.number)
        ]
        absent = [m for m in self.metric_names if m not in columns]
        if absent:
            raise InstrumentError(f"instrument.metrics: {path} has no columns {absent}", retryable=False)
        self.path = path
        self.keys = np.stack([columns[p].astype(float) for p in self.parameters], axis=1)
        self.values = {m: columns[m].astype(float) for m in self.metric_names}
        self._scale = np.where(np.ptp(self.keys, axis=0) > 0, np.ptp(self.keys, axis=0), 1.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": "recorded", "file": str(self.path), "rows": len(self.keys), "metrics": self.metric_names}

    def measure(self, params: dict[str, Any]) -> Measurement:
        q = np.array([float(params[p]) for p in self.parameters])
        d = (np.abs(self.keys - q) / self._scale).max(axis=1)
        i = int(np.argmin(d))
        if d[i] > 1e-6:
            raise InstrumentError(f"{self.path.name} has no row at {params}", retryable=False)
        metrics = {m: float(v[i]) for m, v in self.values.items() if np.isfinite(v[i])}
        return Measurement(metrics=metrics, metadata={"row": i})
