"""A campaign's report, rebuilt from its store every time: one self-contained index.html (figures inlined) and
the same figures as PNG files: convergence, the Pareto front (pairwise for 3+ objectives), the scan map with
the model's mean and standard deviation for pool and grid spaces, and novelty over time, kept and dropped."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from controller import report_html as H
from controller.errors import UserError
from controller.results import FallbackTally, best_trial, feasible, pareto_summary
from controller.store import Store, TrialRecord
from policies.base import Objective, OutcomeConstraint

SCAN_ROWS = 20_000
"""Pool rows drawn in the model maps at most (a random subset beyond), so a huge grid stays quick."""
GP_POINTS = 500
"""Measurements the model map's GP is fitted on at most (exact GP: O(n^3)): the best half and the latest."""
TABLE_ROWS = 1000
"""Trials listed in index.html at most (the latest); `aec export` gives them all."""


class NoModel(Exception):
    """Why the scan map has no model panels, in words for the caption."""


def report_dir(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".report")


def _problem(config: dict[str, Any]) -> tuple[list[Objective], list[OutcomeConstraint]]:
    objs = [Objective(o["metric"], o.get("goal", "minimize") == "maximize", o.get("threshold")) for o in config["objectives"]]
    cons = [OutcomeConstraint(c["metric"], c["op"], c["bound"]) for c in config.get("constraints", [])]
    return objs, cons


def _done(records: list[TrialRecord], metrics: list[str]) -> list[TrialRecord]:
    out = [r for r in records if r.status == "completed" and all(m in r.metrics for m in metrics)]
    return sorted(out, key=lambda r: (r.completed_seq or 0, r.id))


def convergence_figure(records: list[TrialRecord], objective: Objective, constraints: list[OutcomeConstraint]):
    plt = H.pyplot()
    done = _done(records, [objective.metric])
    y = np.array([r.metrics[objective.metric] for r in done])
    ok = np.array([feasible(r, [objective], constraints) for r in done], dtype=bool)
    best, incumbent = [], None
    for v, f in zip(y, ok):
        if f and (incumbent is None or objective.sign() * v > objective.sign() * incumbent):
            incumbent = v
        best.append(np.nan if incumbent is None else incumbent)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    n = np.arange(1, len(y) + 1)
    ax.scatter(n[ok], y[ok], s=22, alpha=0.6, label="measured")
    if (~ok).any():
        ax.scatter(n[~ok], y[~ok], s=22, marker="x", color="grey", label="infeasible")
    ax.plot(n, best, color="C3", lw=2.5, label="best so far")
    ax.set_xlabel("measurement (completion order)")
    ax.set_ylabel(objective.metric)
    ax.set_title(f"convergence: {objective.metric} ({'maximise' if objective.maximize else 'minimise'})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def pareto_figure(records: list[TrialRecord], objectives: list[Objective], constraints: list[OutcomeConstraint]):
    plt = H.pyplot()
    ps = pareto_summary(records, objectives, constraints)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.0 * rows), squeeze=False)
    done = _done(records, [o.metric for o in objectives])
    front_ids = {r.id for r in ps.trials}
    for ax, (i, j) in zip(axes.flat, pairs):
        mi, mj = objectives[i].metric, objectives[j].metric
        ax.scatter([r.metrics[mi] for r in done], [r.metrics[mj] for r in done], s=18, alpha=0.45, label="measured")
        front = sorted((r for r in done if r.id in front_ids), key=lambda r: r.metrics[mi])
        ax.scatter([r.metrics[mi] for r in front], [r.metrics[mj] for r in front], s=40, color="C3", label="Pareto set")
        ax.set_xlabel(mi)
        ax.set_ylabel(mj)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    hv = "n/a" if ps.hypervolume is None else f"{ps.hypervolume:.6g}"
    axes[0][0].legend()
    fig.suptitle(f"Pareto front: {len(ps.trials)} points, hypervolume {hv}" + (" (pairwise)" if len(pairs) > 1 else ""))
    fig.tight_layout()
    return fig


def scan_figure(records: list[TrialRecord], names: list[str], metric: str, model: dict[str, np.ndarray] | None):
    """Measured points over the first two parameters; with `model`, its mean and std over the pool beside them."""
    plt = H.pyplot()
    done = _done(records, [metric])
    x = [float(r.params[names[0]]) for r in done]
    y = [float(r.params[names[1]]) for r in done]
    panels = 3 if model is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 5.2), squeeze=False)
    ax = axes[0][0]
    sc = ax.scatter(x, y, c=[r.metrics[metric] for r in done], s=40, cmap="viridis", edgecolors="k", linewidths=0.3)
    ax.plot(x, y, color="k", lw=0.5, alpha=0.4)
    fig.colorbar(sc, ax=ax, label=metric)
    ax.set_title(f"scan map: {metric}, {len(done)} measurements in order")
    if model is not None:
        for ax2, key, cmap in ((axes[0][1], "mean", "viridis"), (axes[0][2], "std", "magma")):
            size = float(np.clip(12_000 / max(len(model["x"]), 1), 4, 40))
            s2 = ax2.scatter(model["x"], model["y"], c=model[key], s=size, cmap=cmap)
            ax2.scatter(x, y, s=14, facecolors="none", edgecolors="w", linewidths=0.8)
            fig.colorbar(s2, ax=ax2, label=f"model {key} of {metric}")
            ax2.set_title(f"model {'mean' if key == 'mean' else 'standard deviation'} over the pool")
    for a in axes[0]:
        a.set_xlabel(names[0])
        a.set_ylabel(names[1])
    fig.tight_layout()
    return fig


def novelty_figure(records: list[TrialRecord]):
    """Novelty score per measurement, kept or dropped, and the number kept so far."""
    plt = H.pyplot()
    done = [r for r in _done(records, []) if r.novelty is not None]
    n = np.arange(1, len(done) + 1)
    s = np.array([r.novelty for r in done])
    kept = np.array([bool(r.kept) for r in done])
    fig, ax = plt.subplots(figsize=(9, 5.2))
    ax.scatter(n[kept], s[kept], s=26, color="C2", label=f"kept ({kept.sum()})")
    ax.scatter(n[~kept], s[~kept], s=18, color="grey", alpha=0.6, label=f"dropped ({(~kept).sum()})")
    ax.set_xlabel("measurement (completion order)")
    ax.set_ylabel("novelty score")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(n, np.cumsum(kept), color="C1", lw=2, label="kept so far")
    ax2.set_ylabel("data products kept so far")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    ax.set_title("novelty over time")
    return fig


def pool_model(config: dict[str, Any], base_dir: Path, records: list[TrialRecord], names: list[str],
               metric: str, seed: int = 0) -> dict[str, np.ndarray] | None:
    """A GP (BoTorch SingleTaskGP) fitted on the measurements (at most GP_POINTS: the best half and the
    latest), predicted over the pool rows; raises NoModel (with the reason) when the space has no pool table
    here (a simulator's catalogue), it cannot be read, or there are too few measurements. The result's
    `fitted_on` and `measured` say how many points the GP saw."""
    from controller.config import SpaceConfig
    from controller.space import Space

    pool_cfg = (config.get("space") or {}).get("pool")
    if not pool_cfg or pool_cfg.get("simulator"):
        raise NoModel("the pool is a simulator's catalogue, not a table")
    done = [r for r in _done(records, [metric]) if r.x]
    if len(done) < 3:
        raise NoModel(f"{len(done)} measurement(s) with encoded settings, 3 needed")
    try:
        space = Space.from_config(SpaceConfig.model_validate(config["space"]), base_dir)
    except (UserError, ValueError, OSError) as exc:
        raise NoModel(f"the pool table cannot be read here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if space.pool is None or not all(n in space.names for n in names):
        raise NoModel(f"the pool has no columns {', '.join(names)}")
    measured = len(done)
    if len(done) > GP_POINTS:
        sign = -1.0 if (config["objectives"][0].get("goal", "minimize") == "maximize") else 1.0
        best = sorted(range(len(done)), key=lambda i: sign * done[i].metrics[metric])[:GP_POINTS // 2]
        chosen = set(best)
        for i in range(len(done) - 1, -1, -1):
            if len(chosen) >= GP_POINTS:
                break
            chosen.add(i)
        done = [done[i] for i in sorted(chosen)]
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    X = torch.tensor(np.array([r.x for r in done]), dtype=torch.float64)
    Y = torch.tensor([[r.metrics[metric]] for r in done], dtype=torch.float64)
    model = SingleTaskGP(X, Y)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    rows = np.arange(len(space.pool))
    if len(rows) > SCAN_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, SCAN_ROWS, replace=False))
    enc = space.encoded().pool[rows]
    with torch.no_grad():
        post = model.posterior(torch.tensor(enc, dtype=torch.float64))
        mean = post.mean.squeeze(-1).numpy()
        std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
    i, j = space.names.index(names[0]), space.names.index(names[1])
    return {"x": space.pool[rows, i], "y": space.pool[rows, j], "mean": mean, "std": std, "fitted_on": len(done),
            "measured": measured}


def _figures(store: Store) -> list[tuple[str, str, Any]]:
    """(file name, caption, matplotlib figure) for what fits this campaign."""
    config = store.config()
    objectives, constraints = _problem(config)
    records = store.trials()
    if not any(r.status == "completed" for r in records):
        return []
    out = []
    if len(objectives) == 1:
        out.append(("convergence.png", "each measurement and the best so far",
                    convergence_figure(records, objectives[0], constraints)))
    else:
        out.append(("pareto.png", "measured trials and the Pareto set, every pair of objectives",
                    pareto_figure(records, objectives, constraints)))
    space = config.get("space") or {}
    first = next((r for r in records if r.status == "completed"), None)
    numeric = [k for k, v in (first.params if first else {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if space.get("pool") is not None and len(numeric) >= 2:
        base_dir = Path(store.get_meta("base_dir", ".") or ".")
        why = ""
        try:
            model = pool_model(config, base_dir, records, numeric[:2], objectives[0].metric, config.get("seed", 0))
        except NoModel as exc:
            model, why = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be fitted leaves the measured map
            model, why = None, f"the GP could not be fitted: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if model is not None:
            caption = "measured map; the GP's mean and standard deviation over the pool" + (
                f" (GP fitted on {model['fitted_on']} of the {model['measured']} measurements: the best and the latest)"
                if model["fitted_on"] < model["measured"] else "")
        else:
            caption = f"measured map (no model map: {why})"
        out.append(("scan.png", caption, scan_figure(records, numeric[:2], objectives[0].metric, model)))
    if any(r.novelty is not None for r in records):
        out.append(("novelty.png", "novelty score per measurement, kept or dropped", novelty_figure(records)))
    return out


def write_figures(store: Store, out: Path | None = None) -> list[Path]:
    """Write the PNG figures that fit this campaign into `out` (default `<store>.report/`); returns their paths."""
    figs = _figures(store)
    if not figs:
        return []
    out = _writable(out or report_dir(store.path))
    paths = []
    for name, _, fig in figs:
        H.png(fig, out / name)
        paths.append(out / name)
    return paths


def write_html(store: Store, out: Path | None = None) -> Path:
    """index.html (self-contained) and the PNG figures in `out` (default `<store>.report/`), from the store now."""
    out = _writable(out or report_dir(store.path))
    config = store.config()
    records = store.trials()
    objectives, constraints = _problem(config)
    sections = [H.section("summary", _summary(config, records, objectives, constraints))]
    figs = [H.figure(H.png(fig, out / name), caption, wide=name in ("scan.png", "pareto.png"))
            for name, caption, fig in _figures(store)]
    if figs:
        sections.append(H.section("figures", f'<div class="figs">{"".join(figs)}</div>'))
    shown = records[-TABLE_ROWS:]
    note = (f'<p class="note">the latest {len(shown)} of {len(records)} trials; `aec export {store.path}` '
            "gives them all</p>" if len(shown) < len(records) else "")
    sections.append(H.section(f"trials ({len(records)})", note + _trial_table(shown)))
    subtitle = (f"{len(records)} trials, store {store.path}, report written "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} from the store")
    return H.write_page(out, H.page(f"aec: {config['name']}", subtitle, sections))


def _summary(config: dict[str, Any], records: list[TrialRecord], objectives: list[Objective],
             constraints: list[OutcomeConstraint]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    budget = (config.get("budget") or {}).get("trials")
    rows: list[tuple[str, Any]] = [
        ("trials", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"),
        ("trial budget", budget if budget is not None else "none"),
        ("policy", config.get("policy", {}).get("kind", "sobol")),
        ("instrument", config["instrument"]["kind"]),
        ("objectives", ", ".join(f"{o.metric} ({'max' if o.maximize else 'min'})" for o in objectives)),
    ]
    if len(objectives) == 1:
        best = best_trial(records, objectives[0], constraints)
        if best is not None:
            rows.append((f"best {objectives[0].metric}", f"{best.metrics[objectives[0].metric]:.6g} (trial {best.id}) at "
                         + ", ".join(f"{k}={H.fmt(v)}" for k, v in best.params.items())))
    else:
        ps = pareto_summary(records, objectives, constraints)
        rows.append(("Pareto set", f"{len(ps.trials)} trials, hypervolume "
                     f"{'n/a' if ps.hypervolume is None else f'{ps.hypervolume:.6g}'}"))
    fb = FallbackTally.from_records(records).to_json()
    rows.append(("fallbacks", fb["count"] or "none"))
    kept = [r for r in records if r.kept is not None]
    if kept:
        rows.append(("data products kept", f"{sum(bool(r.kept) for r in kept)} of {len(kept)}"))
    return H.table(["", ""], rows, cls="kv")


def _trial_table(records: list[TrialRecord]) -> str:
    metrics = sorted({m for r in records for m in r.metrics})
    params = list(dict.fromkeys(p for r in records for p in r.params))
    rows = [[r.id, r.status, r.attempts, *[r.params.get(p) for p in params], *[r.metrics.get(m) for m in metrics]]
            for r in records]
    return f'<div class="scroll">{H.table(["id", "status", "attempts", *params, *metrics], rows)}</div>'


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
