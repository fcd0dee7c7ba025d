"""Write a reference set and an input stream for `aec triage` from scikit-learn's handwritten digits.

The reference holds digits 0-4 (the known domain); the input holds other 0-4 digits with 2% of
rows replaced by digits 5-9 (the novel ones), and `runs/triage/truth.npy` says which rows those are.

    python examples/make_triage_data.py
    aec triage --reference runs/triage/reference.npy --input runs/triage/input.npy --keep 0.05 --out runs/triage/out
    python examples/make_triage_data.py --check runs/triage/out      # recall of the novel rows
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

HERE = Path("runs/triage")


def write(seed: int = 0, novel_share: float = 0.02) -> None:
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    known = rng.permutation(np.flatnonzero(y < 5))
    novel = rng.permutation(np.flatnonzero(y >= 5))
    reference, rest = known[: len(known) // 2], known[len(known) // 2:]
    n_novel = max(1, round(novel_share * len(rest)))
    stream = np.concatenate([rest, novel[:n_novel]])
    order = rng.permutation(len(stream))
    truth = np.flatnonzero(order >= len(rest))
    HERE.mkdir(parents=True, exist_ok=True)
    np.save(HERE / "reference.npy", X[reference].astype(np.float32))
    np.save(HERE / "input.npy", X[stream[order]].astype(np.float32))
    np.save(HERE / "truth.npy", truth)
    print(f"wrote {HERE}/reference.npy ({len(reference)} rows) and input.npy ({len(stream)} rows, {len(truth)} novel)")


def check(out: Path) -> None:
    kept = set(np.load(out / "kept.npy").tolist())
    truth = np.load(HERE / "truth.npy")
    found = sum(int(t) in kept for t in truth)
    print(f"kept {len(kept)} rows; {found} of the {len(truth)} novel rows among them (recall {found / len(truth):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, help="a triage output folder to score against the truth")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    check(args.check) if args.check else write(args.seed)
