"""Figures and an HTML report from a store: convergence, Pareto front, and scan map for 2-D pools."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from controller.results import feasible, pareto_summary
from controller.errors import UserError
from controller.store import Store, TrialRecord
from policies.base import Objective, OutcomeConstraint


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_dir(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".report")


def _problem(config: dict[str, Any]) -> tuple[list[Objective], list[OutcomeConstraint]]:
    objs = [Objective(o["metric"], o.get("goal", "minimize") == "maximize", o.get("threshold")) for o in config["objectives"]]
    cons = [OutcomeConstraint(c["metric"], c["op"], c["bound"]) for c in config.get("constraints", [])]
    return objs, cons


def convergence_figure(records: list[TrialRecord], objective: Objective, constraints: list[OutcomeConstraint], path: Path) -> Path:
    plt = _pyplot()
    done = [r for r in records if r.status == "completed" and objective.metric in r.metrics]
    done.sort(key=lambda r: r.completed_seq or r.id)
    y = np.array([r.metrics[objective.metric] for r in done])
    ok = np.array([feasible(r, [objective], constraints) for r in done], dtype=bool)
    best, incumbent = [], None
    for v, f in zip(y, ok):
        if f and (incumbent is None or objective.sign() * v > objective.sign() * incumbent):
            incumbent = v
        best.append(np.nan if incumbent is None else incumbent)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    n = np.arange(1, len(y) + 1)
    ax.scatter(n[ok], y[ok], s=12, alpha=0.6, label="measured")
    if (~ok).any():
        ax.scatter(n[~ok], y[~ok], s=12, marker="x", color="grey", label="infeasible")
    ax.plot(n, best, color="C3", lw=2, label="best so far")
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel(objective.metric)
    ax.set_title(f"{objective.metric}: {'maximise' if objective.maximize else 'minimise'}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_figure(records: list[TrialRecord], objectives: list[Objective], constraints: list[OutcomeConstraint], path: Path) -> Path:
    plt = _pyplot()
    ps = pareto_summary(records, objectives, constraints)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.4 * len(pairs), 4.0), dpi=110, squeeze=False)
    done = [r for r in records if r.status == "completed" and all(o.metric in r.metrics for o in objectives)]
    front_ids = {r.id for r in ps.trials}
    for ax, (i, j) in zip(axes[0], pairs):
        mi, mj = objectives[i].metric, objectives[j].metric
        ax.scatter([r.metrics[mi] for r in done], [r.metrics[mj] for r in done], s=10, alpha=0.4, label="measured")
        front = sorted((r for r in done if r.id in front_ids), key=lambda r: r.metrics[mi])
        ax.scatter([r.metrics[mi] for r in front], [r.metrics[mj] for r in front], s=22, color="C3", label="Pareto set")
        ax.set_xlabel(mi)
        ax.set_ylabel(mj)
    hv = "n/a" if ps.hypervolume is None else f"{ps.hypervolume:.6g}"
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Pareto front ({len(ps.trials)} points, hypervolume {hv})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def scan_figure(records: list[TrialRecord], names: list[str], metric: str, path: Path) -> Path:
    plt = _pyplot()
    done = [r for r in records if r.status == "completed" and metric in r.metrics]
    x = [float(r.params[names[0]]) for r in done]
    y = [float(r.params[names[1]]) for r in done]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    sc = ax.scatter(x, y, c=[r.metrics[metric] for r in done], s=30, cmap="viridis")
    ax.plot(x, y, color="k", lw=0.4, alpha=0.4)
    fig.colorbar(sc, ax=ax, label=metric)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"scan map: {metric} ({len(done)} points, in measurement order)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_figures(store: Store, out: Path | None = None) -> list[Path]:
    """Write the PNG figures that fit this campaign into `out` (default `<store>.report/`); returns their paths."""
    config = store.config()
    objectives, constraints = _problem(config)
    records = store.trials()
    if not any(r.status == "completed" for r in records):
        return []
    out = _writable(out or report_dir(store.path))
    paths = []
    if len(objectives) == 1:
        paths.append(convergence_figure(records, objectives[0], constraints, out / "convergence.png"))
    else:
        paths.append(pareto_figure(records, objectives, constraints, out / "pareto.png"))
    space = config.get("space") or {}
    first = next((r for r in records if r.status == "completed"), None)
    numeric = [k for k, v in (first.params if first else {}).items() if isinstance(v, (int, float))]
    if space.get("pool") is not None and len(numeric) >= 2:
        paths.append(scan_figure(records, numeric[:2], objectives[0].metric, out / "scan.png"))
    return paths


def write_html(store: Store, out: Path | None = None) -> Path:
    """An index.html with the figures and a table of trials, in `out` (default `<store>.report/`)."""
    out = _writable(out or report_dir(store.path))
    figures = write_figures(store, out)
    config = store.config()
    records = store.trials()
    metrics = sorted({m for r in records for m in r.metrics})
    params = sorted({p for r in records for p in r.params})
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            [r.id, r.status, r.attempts] + [_fmt(r.params.get(p)) for p in params] + [_fmt(r.metrics.get(m)) for m in metrics]
        )) + "</tr>" for r in records
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["id", "status", "attempts", *params, *metrics])
    imgs = "".join(f'<img src="{p.name}" style="max-width:48%">' for p in figures)
    page = (f"<!doctype html><meta charset=utf-8><title>aec: {html.escape(config['name'])}</title>"
            f"<h1>{html.escape(config['name'])}</h1><p>{len(records)} trials, store {html.escape(str(store.path))}</p>"
            f"{imgs}<table border=1 cellspacing=0 cellpadding=3><tr>{head}</tr>{rows}</table>")
    (out / "index.html").write_text(page)
    return out / "index.html"


def _writable(folder: Path) -> Path:
    """`folder`, created; a UserError naming it (and --out) when it cannot be written, e.g. on read-only media."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".aec-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{folder}: cannot write the report there ({exc.strerror}); pass --out DIR") from None
    return folder


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)
