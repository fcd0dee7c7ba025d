"""Novelty quality: does the autoencoder rank unknown data above known data, and keep it within a budget?

Cases (each: train on known data, test on held-out known data plus novel data):
  digits-*       sklearn's 8x8 digits; some classes known, the others novel.
  telescope      64x64 cutouts from the telescope simulator; novel = cutouts with an injected
                 unusual transient (a satellite streak, a sharp cosmic-ray hit or a ring-shaped echo).
  microscope-k   256-channel spectra from the microscope simulator; novel = pixels dominated by
                 phase k (abundance > 0.5), known = pixels with almost none of it (< 0.1).
Methods: the autoencoder (policies.selection.NoveltyDetector with its defaults: reconstruction error
plus latent Mahalanobis distance; 80 epochs for the cutouts), the same network scored by
reconstruction error alone (ae-reconstruction), sklearn's IsolationForest, and PCA reconstruction
error with as many components as the autoencoder's latent width (8).
Metrics: AUROC (known vs novel), and recall of novel items at a 5% keep budget when novel items
are 2% of the stream (top 5% by score, averaged over resampled mixtures); for the autoencoder also
the recall of `select` (p < 0.05, budget 5%) on the same mixtures.

    python benchmarks/novelty_quality.py --seeds 3 [--cases digits,telescope,microscope] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any, Callable

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from policies.selection import Budget, DetectorOptions, NoveltyDetector, select

Case = tuple[np.ndarray, np.ndarray, np.ndarray]  # train known, held-out known, novel
BUDGET, PREVALENCE, LEVEL, RESAMPLES = 0.05, 0.02, 0.05, 200


# ------------------------------------------------------------------ cases
def digits_case(known: list[int], seed: int) -> Case:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(np.flatnonzero(np.isin(y, known)))
    cut = int(0.7 * len(idx))
    return X[idx[:cut]], X[idx[cut:]], X[~np.isin(y, known)]


def _telescope_cutouts(n: int, seed: int) -> np.ndarray:
    import simulators
    from simulators import SimulatorError

    sim = simulators.create("telescope", seed=seed, nights=60)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < n:
        c = sim.conditions()
        rows = torch.nonzero(c["observable"] & (c["altitude"] > 35)).flatten().numpy()
        if len(rows) == 0:
            sim.wait(1800)
            continue
        pick = rng.choice(rows, min(16, len(rows)), replace=False)
        try:
            result = sim.evaluate({"field_id": torch.as_tensor(sim.fields.field_id[pick], dtype=torch.float64)})
        except SimulatorError:  # a field set during the batch
            sim.wait(600)
            continue
        if result.data is not None:
            out.append(result.data.numpy().astype(np.float32))
    return np.concatenate(out)[:n]


def inject_unusual(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add one unusual transient per cutout, scaled to its noise: streak, sharp hit or ring."""
    out = images.copy()
    n, h, w = images.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    flat = images.reshape(n, -1)
    noise = 1.4826 * np.median(np.abs(flat - np.median(flat, 1, keepdims=True)), 1)
    for i in range(n):
        kind = rng.integers(3)
        cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
        if kind == 0:  # satellite streak
            th = rng.uniform(0, np.pi)
            d = np.abs((xx - cx) * np.sin(th) - (yy - cy) * np.cos(th))
            add = 3.0 * np.exp(-0.5 * (d / 1.2) ** 2)
        elif kind == 1:  # cosmic-ray hit: sharper than any seeing
            add = np.zeros((h, w), np.float32)
            add[int(cy), int(cx) : int(cx) + rng.integers(1, 4)] = 25.0
        else:  # ring-shaped echo
            r = np.hypot(xx - cx, yy - cy)
            add = 2.0 * np.exp(-0.5 * ((r - rng.uniform(6, 12)) / 1.5) ** 2)
        out[i] += noise[i] * add
    return out


def telescope_case(seed: int, n: int = 2400) -> Case:
    cut = _telescope_cutouts(n, seed)
    rng = np.random.default_rng(seed)
    cut = cut[rng.permutation(len(cut))]
    n_train, n_test = int(0.6 * n), int(0.25 * n)
    return cut[:n_train], cut[n_train : n_train + n_test], inject_unusual(cut[n_train + n_test :], rng)


def microscope_case(phase: int, seed: int) -> Case:
    import simulators

    sim = simulators.create("microscope", size=64, seed=seed)
    ys, xs = np.mgrid[: sim.height, : sim.width]
    res = sim.evaluate({"x": torch.as_tensor(xs.ravel(), dtype=torch.float64),
                        "y": torch.as_tensor(ys.ravel(), dtype=torch.float64)})
    spectra = res.data.numpy()
    frac = sim.ground_truth()["abundances"][phase].ravel()
    rng = np.random.default_rng(seed)
    known = rng.permutation(np.flatnonzero(frac < 0.1))
    cut = int(0.7 * len(known))
    return spectra[known[:cut]], spectra[known[cut:]], spectra[frac > 0.5]


CASES: dict[str, Callable[[int], Case]] = {
    "digits-0to4": lambda s: digits_case([0, 1, 2, 3, 4], s),
    "digits-odd": lambda s: digits_case([1, 3, 5, 7, 9], s),
    "digits-0to7": lambda s: digits_case([0, 1, 2, 3, 4, 5, 6, 7], s),
    "telescope": telescope_case,
    "microscope-0": lambda s: microscope_case(0, s),
    "microscope-1": lambda s: microscope_case(1, s),
    "microscope-2": lambda s: microscope_case(2, s),
}


# ------------------------------------------------------------------ methods
# Per-case detector options: cutouts get fewer epochs (a 64x64 convolutional network on 2 CPU cores).
CASE_OPTIONS: dict[str, dict[str, Any]] = {"telescope": {"epochs": 80}}


def autoencoder(train: np.ndarray, seed: int, **options: Any) -> tuple[Callable[[np.ndarray], np.ndarray], NoveltyDetector]:
    det = NoveltyDetector(DetectorOptions(**options), seed=seed).fit(train)
    return det.score, det


def pca(train: np.ndarray, seed: int, components: int = 8):
    flat = train.reshape(len(train), -1)
    model = PCA(n_components=min(components, *flat.shape), random_state=seed).fit(flat)

    def score(X: np.ndarray) -> np.ndarray:
        F = X.reshape(len(X), -1)
        return ((model.inverse_transform(model.transform(F)) - F) ** 2).sum(1)

    return score, None


def isolation_forest(train: np.ndarray, seed: int):
    model = IsolationForest(random_state=seed).fit(train.reshape(len(train), -1))
    return (lambda X: -model.score_samples(X.reshape(len(X), -1))), None


METHODS = {"autoencoder": autoencoder, "pca": pca, "iforest": isolation_forest}
# Reported besides: the same trained autoencoder scored by reconstruction error alone.
COLUMNS = ["autoencoder", "ae-reconstruction", "pca", "iforest"]


# ------------------------------------------------------------------ metrics
def mixtures(n_known: int, n_novel: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices into concat(known, novel) of RESAMPLES streams with novel items at PREVALENCE."""
    m = max(1, min(n_novel, round(PREVALENCE * n_known / (1 - PREVALENCE))))
    return [np.r_[np.arange(n_known), n_known + rng.choice(n_novel, m, replace=False)] for _ in range(RESAMPLES)]


def recall_at_budget(scores: np.ndarray, labels: np.ndarray, streams: list[np.ndarray]) -> float:
    out = []
    for idx in streams:
        k = int(np.floor(BUDGET * len(idx)))
        top = idx[np.argsort(-scores[idx], kind="stable")[:k]]
        out.append(labels[top].sum() / labels[idx].sum())
    return float(np.mean(out))


def select_recall(det: NoveltyDetector, scores: np.ndarray, labels: np.ndarray, streams: list[np.ndarray]) -> float:
    p = det.pvalues(scores)
    out = []
    for idx in streams:
        keep = select(p[idx], Budget(fraction=BUDGET), level=LEVEL, scores=scores[idx])
        out.append(labels[idx][keep].sum() / labels[idx].sum())
    return float(np.mean(out))


def run_case(name: str, seed: int) -> list[dict[str, Any]]:
    train, known, novel = CASES[name](seed)
    X = np.concatenate([known, novel])
    labels = np.r_[np.zeros(len(known)), np.ones(len(novel))]
    streams = mixtures(len(known), len(novel), np.random.default_rng(seed))
    rows = []

    def record(method: str, s: np.ndarray, fit_s: float) -> dict[str, Any]:
        rows.append({"case": name, "seed": seed, "method": method, "auroc": float(roc_auc_score(labels, s)),
                     "recall_at_5pct": recall_at_budget(s, labels, streams), "fit_seconds": round(fit_s, 2),
                     "train": len(train), "known_test": len(known), "novel": len(novel)})
        return rows[-1]

    for method, build in METHODS.items():
        t0 = time.perf_counter()
        extra = CASE_OPTIONS.get(name, {}) if method == "autoencoder" else {}
        score_fn, det = build(train, seed, **extra)
        fit_s = time.perf_counter() - t0
        row = record(method, score_fn(X), fit_s)
        if det is not None:
            s = score_fn(X)
            row.update(select_recall_at_5pct=select_recall(det, s, labels, streams), epochs=det.report.epochs,
                       options=extra)
            det.options.score = "reconstruction"
            record("ae-reconstruction", det.score(X), fit_s)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        entry: dict[str, Any] = {}
        for method in COLUMNS:
            rs = [r for r in rows if r["case"] == case and r["method"] == method]
            entry[method] = {k: float(np.mean([r[k] for r in rs])) for k in ("auroc", "recall_at_5pct")}
            entry[method]["auroc_std"] = float(np.std([r["auroc"] for r in rs]))
            if method == "autoencoder":
                entry[method]["select_recall_at_5pct"] = float(np.mean([r["select_recall_at_5pct"] for r in rs]))
        best = max(entry[m]["auroc"] for m in ("pca", "iforest"))
        entry["autoencoder_matches_best_baseline"] = entry["autoencoder"]["auroc"] >= best - 1e-9
        out[case] = entry
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"novelty quality: AUROC (recall of novel at a {BUDGET:.0%} keep budget, {PREVALENCE:.0%} novel)")
    table.add_column("case")
    for m in COLUMNS:
        table.add_column(m, justify="right")
    table.add_column("AE select recall", justify="right")
    table.add_column("AE >= best", justify="center")
    for case, e in summary.items():
        cells = [f"{e[m]['auroc']:.3f}±{e[m]['auroc_std']:.3f} ({e[m]['recall_at_5pct']:.2f})" for m in COLUMNS]
        table.add_row(case, *cells, f"{e['autoencoder']['select_recall_at_5pct']:.2f}",
                      "yes" if e["autoencoder_matches_best_baseline"] else "no")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", default="digits,telescope,microscope",
                        help="comma-separated case names or prefixes (digits, telescope, microscope)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    names = [n for n in CASES if any(n == w or n.startswith(w) for w in wanted)]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in names:
        for seed in range(args.seeds):
            rows += run_case(name, seed)
            print(f"{name} seed {seed}: " + ", ".join(f"{r['method']} {r['auroc']:.3f}" for r in rows[-len(COLUMNS):]), flush=True)
    summary = summarise(rows)
    if summary:
        print_table(summary)
    result = {"benchmark": "novelty_quality", "seconds": round(time.perf_counter() - t0, 1), "seeds": args.seeds,
              "budget": BUDGET, "prevalence": PREVALENCE, "level": LEVEL, "summary": summary,
              "runs": rows, "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                            "threads": torch.get_num_threads()}}
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
