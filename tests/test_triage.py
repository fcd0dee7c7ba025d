"""Offline triage: three output files of the right shapes, streamed input, clear errors for bad files."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from controller.errors import UserError
from controller.triage import ArrayFile, load_array, triage
from policies.selection import DetectorOptions

FAST = DetectorOptions(epochs=30, patience=8)
GRID = np.linspace(0.0, 1.0, 24)


def events(n: int, rng: np.random.Generator, peaks: tuple[float, ...] = (0.25, 0.55)) -> np.ndarray:
    heights = rng.uniform(0.5, 2.0, (n, len(peaks)))
    lines = np.stack([np.exp(-((GRID - c) ** 2) / (2 * 0.05**2)) for c in peaks])
    return (heights @ lines + rng.normal(0.0, 0.05, (n, len(GRID)))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A reference set and an input of 2500 events whose rows 100..149 carry an unseen line."""
    d = tmp_path_factory.mktemp("triage")
    rng = np.random.default_rng(0)
    ref = events(500, rng)
    inp = events(2500, rng)
    inp[100:150] = events(50, rng, peaks=(0.25, 0.55, 0.85))
    np.save(d / "ref.npy", ref)
    np.save(d / "input.npy", inp)
    np.savez(d / "input.npz", events=inp, labels=np.arange(len(inp)))
    with h5py.File(d / "input.h5", "w") as f:
        f.create_dataset("run1/events", data=inp, chunks=(256, 24))
    np.save(d / "other_shape.npy", events(100, rng)[:, :16])
    np.save(d / "empty.npy", np.zeros((0, 24), np.float32))
    np.savez(d / "two.npz", a=inp, b=inp)
    (d / "table.csv").write_text("a,b\n1,2\n")
    return {p.stem + p.suffix: p for p in d.iterdir()}


def test_triage_writes_scores_pvalues_and_sorted_kept_rows_within_budget(files, tmp_path):
    out = tmp_path / "out"
    summary = triage(files["ref.npy"], files["input.npy"], 0.05, out, chunk_rows=512, progress=False, options=FAST)
    scores, pvalues, kept = (np.load(out / f) for f in ("scores.npy", "pvalues.npy", "kept.npy"))
    assert scores.shape == (2500,) and pvalues.shape == (2500,)
    assert kept.ndim == 1 and kept.dtype.kind == "i" and np.all(np.diff(kept) > 0)
    assert len(kept) <= math.floor(0.05 * 2500) and summary["kept"] == len(kept)
    assert summary["rows"] == 2500 and summary["chunks"] == math.ceil(2500 / 512)
    assert np.isin(np.arange(100, 150), kept).mean() > 0.9  # the unseen line is kept
    assert ((pvalues < 0.05) == (scores > summary["threshold"])).all()
    assert summary["novel"] == int((pvalues < 0.05).sum()) and summary["rate"] > 0 and summary["seconds"] > 0
    assert np.all((pvalues > 0) & (pvalues <= 1))


def test_triage_streams_npz_and_hdf5_in_chunks_with_the_same_result(files, tmp_path):
    results = {}
    for name in ("input.npy", "input.npz", "input.h5"):
        out = tmp_path / name
        summary = triage(files["ref.npy"], files[name], 0.05, out, chunk_rows=300, progress=False, seed=1,
                         options=FAST, dataset=None if name != "input.h5" else "run1/events")
        assert summary["chunks"] == math.ceil(2500 / 300)
        results[name] = (np.load(out / "scores.npy"), np.load(out / "kept.npy"))
    for name in ("input.npz", "input.h5"):
        np.testing.assert_array_equal(results[name][0], results["input.npy"][0])
        np.testing.assert_array_equal(results[name][1], results["input.npy"][1])


def test_array_file_reads_chunks_smaller_than_the_file(files):
    with ArrayFile(files["input.npz"], "events") as f:
        blocks = list(f.chunks(1000))
    assert [len(b) for _, b in blocks] == [1000, 1000, 500]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), np.load(files["input.npy"]))
    sub = load_array(files["input.h5"], max_rows=100)
    assert sub.shape == (100, 24)


@pytest.mark.parametrize(
    "reference, input, message",
    [
        ("missing.npy", "input.npy", r"reference file .*missing\.npy does not exist"),
        ("ref.npy", "table.csv", r"input file .*table\.csv: expected a \.npy, \.npz or \.h5"),
        ("ref.npy", "other_shape.npy", r"other_shape\.npy has events of shape \(16,\).*ref\.npy has \(24,\)"),
        ("empty.npy", "input.npy", r"reference file .*empty\.npy holds no events"),
        ("ref.npy", "two.npz", r"two\.npz holds several arrays \(a, b\); name one"),
    ],
)
def test_bad_files_are_user_errors_naming_the_file(files, tmp_path, reference, input, message):
    ref = files.get(reference, tmp_path / reference)
    with pytest.raises(UserError, match=message):
        triage(ref, files[input], 0.05, tmp_path / "out", progress=False, options=FAST)


def test_bad_fractions_are_user_errors(files, tmp_path):
    with pytest.raises(UserError, match="keep"):
        triage(files["ref.npy"], files["input.npy"], 1.5, tmp_path, progress=False)
    with pytest.raises(UserError, match="level"):
        triage(files["ref.npy"], files["input.npy"], 0.1, tmp_path, level=0.0, progress=False)
