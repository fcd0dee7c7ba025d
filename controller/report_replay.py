"""A replay's report: results recomputed from the run stores, then one self-contained index.html with the
curves over seeds (median and interquartile band), Top% against the random baseline, EF and AF, the fraction of
the maximum achievable reward per step (sequential simulators), and a table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from controller import report_html as H


def _band_figure(ax: Any, prob: dict[str, Any], key: str, ylabel: str) -> bool:
    drawn = False
    for i, (pol, r) in enumerate(prob["policies"].items()):
        med = r.get(f"{key}_median")
        if not med:
            continue
        n = np.arange(1, len(med) + 1)
        ax.plot(n, med, lw=2.2, color=f"C{i}", label=f"{pol} (median, {r['runs']} seeds)")
        ax.fill_between(n, r[f"{key}_q25"], r[f"{key}_q75"], color=f"C{i}", alpha=0.18)
        drawn = True
    ax.set_xlabel("measurements")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return drawn


def top_figure(prob: dict[str, Any], top: float):
    """Top% (mean over seeds, band: interquartile range) with the random baseline n/N, and EF(n)."""
    plt = H.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.4))
    for i, (pol, r) in enumerate(prob["policies"].items()):
        mean = r.get("top_fraction_mean")
        if not mean:
            continue
        n = np.arange(1, len(mean) + 1)
        ax.plot(n, mean, lw=2.2, color=f"C{i}", label=f"{pol} (mean of {r['runs']})")
        ax.fill_between(n, r["top_fraction_q25"], r["top_fraction_q75"], color=f"C{i}", alpha=0.15)
        ax2.plot(r["enhancement_factor"]["n"], r["enhancement_factor"]["ef"], lw=2.2, color=f"C{i}", label=pol)
    base = prob["random_top_fraction"]
    ax.plot(np.arange(1, len(base) + 1), base, "k--", lw=2, label="random baseline n/N")
    ax2.axhline(1.0, color="k", ls="--", lw=2, label="random baseline")
    ax.set(xlabel="measurements n", ylabel="Top%", ylim=(0, 1.05),
           title=f"Top%: share of the top {prob['top_count']} ({top:.0%}) of {prob['pool_size']} found")
    ax2.set(xlabel="measurements n", ylabel="EF(n)", title="enhancement factor EF = Top% / Top%_random")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(loc="best")
    fig.tight_layout()
    return fig


def af_figure(prob: dict[str, Any]):
    plt = H.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.4))
    for i, (pol, r) in enumerate(prob["policies"].items()):
        af = r.get("acceleration_factor")
        if af and af["top"]:
            ax.plot(af["top"], af["af"], "o-", lw=2.2, color=f"C{i}", label=pol)
    ax.axhline(1.0, color="k", ls="--", lw=2, label="random baseline")
    ax.set(xlabel="Top% level a", ylabel="AF(a)", xlim=(0, 1.02),
           title="acceleration factor: picks random needs / picks the policy needs")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def curve_figure(prob: dict[str, Any], key: str, title: str, ylabel: str, log: bool = False):
    plt = H.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.4))
    if not _band_figure(ax, prob, key, ylabel):
        plt.close(fig)
        return None
    if log:
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


def _table(prob: dict[str, Any]) -> str:
    has_top = "pool_size" in prob
    head = ["policy", "runs", "fallbacks"]
    if has_top:
        head += ["Top% at budget (mean)", "EF at budget", "AF at Top% 0.5", "AF at Top% 1.0", "picks to Top% 1.0"]
    single = len(prob["objectives"]) == 1
    seq = any(r.get("reward_fraction_mean") for r in prob["policies"].values())
    head += ["best at budget (median)" if single else "hypervolume at budget (median)", "regret at budget (median)"]
    head += ["fraction of max reward per step (mean)"] if seq else []
    head += ["s/decision (median)"]
    rows = []
    for pol, r in prob["policies"].items():
        row: list[Any] = [pol, f"{r.get('finished', 0)}/{r['runs']}", r.get("fallbacks", 0)]
        if has_top:
            af = r.get("acceleration_factor") or {"top": [], "af": [], "picks": []}
            at = {round(a, 9): (f, n) for a, f, n in zip(af["top"], af["af"], af["picks"])}
            half = next((f for a, f in zip(af["top"], af["af"]) if a >= 0.5 - 1e-12), None)
            full = at.get(1.0, (None, None))
            tf = r.get("top_fraction_mean") or [None]
            row += [tf[-1], (r.get("enhancement_factor") or {}).get("at_budget"), half, full[0], full[1]]
        curve = r.get("best_so_far_median") if single else r.get("hypervolume_median")
        reg = r.get("regret_median")
        row += [curve[-1] if curve else None, reg[-1] if reg else None]
        row += [r.get("reward_fraction_at_budget")] if seq else []
        row += [r.get("seconds_per_decision_median")]
        rows.append(row)
    return H.table(head, rows)


def write_replay_html(folder: Path, out: Path | None = None) -> Path:
    """Recompute results.json from DIR/runs/ and write it with index.html and the figures into DIR (or OUT)."""
    from controller.replay.plan import Plan
    from controller.replay.summary import write_results
    from controller.report import _writable

    plan = Plan.read(folder)
    out = _writable(out or folder)
    results = write_results(plan, out)  # beside the page: a replay on read-only media is reported elsewhere
    (out / "figures").mkdir(exist_ok=True)
    sections = []
    for name, prob in results["problems"].items():
        figs = []
        if "pool_size" in prob and any(r.get("top_fraction_mean") for r in prob["policies"].values()):
            figs.append(H.figure(H.png(top_figure(prob, results["top"]), out / "figures" / f"{name}.top.png"),
                                 "Top% with its interquartile band over seeds, and the enhancement factor", wide=True))
            figs.append(H.figure(H.png(af_figure(prob), out / "figures" / f"{name}.af.png"),
                                 "acceleration factor at each Top% level the mean curve reaches"))
        for key, title, label, log in (("best_so_far", "best so far", "best value", False),
                                       ("regret", "regret (distance from the best known value)", "regret", True),
                                       ("hypervolume", "hypervolume", "hypervolume", False),
                                       ("reward_fraction", "fraction of the maximum achievable reward per step "
                                        "(cumulative)", "reward received / max achievable", False)):
            fig = curve_figure(prob, key, f"{name}: {title}", label, log)
            if fig is not None:
                figs.append(H.figure(H.png(fig, out / "figures" / f"{name}.{key}.png"),
                                     f"{title}: median over seeds, band = interquartile range"))
        notes = "".join(f'<p class="note">{H.esc(n)}</p>' for n in prob.get("notes", []))
        desc = (f"<p>{prob['kind']} problem, {prob['budget']} measurements per run"
                + (f", pool of {prob['pool_size']} rows, top set {prob['top_count']}" if "pool_size" in prob else "")
                + "</p>")
        sections.append(H.section(name, desc + notes + _table(prob) + f'<div class="figs">{"".join(figs)}</div>'))
    runs = len(plan.runs)
    subtitle = (f"{len(plan.problems)} problem(s), {len({r.policy for r in plan.runs})} policies, {runs} runs; "
                f"recomputed from {folder}/runs/ at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return H.write_page(out, H.page(f"aec replay: {plan.name}", subtitle, sections))
