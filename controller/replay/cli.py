"""`aec replay`: compare policies on a recorded data set (`--data`), a recorded campaign (`--store`) or a
replay file, many seeds in parallel, into a folder that a second call resumes.

Cheap to import (argparse only): the replay machinery is imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controller.errors import UserError


def add_parser(sub: Any, add_common: Any) -> None:
    p = sub.add_parser("replay", help="replay policies against a recorded data set or campaign, many seeds",
                       description="Each run is a campaign with its own store under OUT/runs/; running the same "
                       "command again skips finished runs and resumes interrupted ones. Results: OUT/results.json; "
                       "`aec report OUT` draws them.")
    p.add_argument("file", nargs="?", help="a replay file (YAML/JSON) for anything beyond the flags")
    p.add_argument("--data", help="recorded data set: .csv, .tsv or .parquet, one row per measured setting")
    p.add_argument("--inputs", help="comma-separated input columns of --data")
    p.add_argument("--objective", action="append", default=[], metavar="COL[:min|max]",
                   help="objective column (repeat for several objectives); default goal: min")
    p.add_argument("--duplicates", choices=["mean", "keep", "first"], default="mean",
                   help="rows with equal inputs: mean of their unique values (default, as Liang et al. 2021), "
                   "each its own row, or the first")
    p.add_argument("--missing", choices=["drop", "refuse"], default="drop",
                   help="rows with a missing value: drop them (listed by line) or stop with an error")
    p.add_argument("--store", action="append", default=[],
                   help="a recorded campaign's store: its problem is re-run (simulator, function) or replayed on "
                   "its own measurements as a pool")
    p.add_argument("--policies", help="comma-separated policy kinds (random,sobol,botorch,ax)")
    p.add_argument("--policy-file", help="YAML/JSON with `policies: [...]`: variants with options and names")
    p.add_argument("--seeds", type=int, help="seeds per policy (default 20)")
    p.add_argument("--budget", type=int, help="measurements per run (default 100, at most the pool's size)")
    p.add_argument("--initial", type=int, help="initial points of model-based policies (default 2, as Liang et al.)")
    p.add_argument("--top", type=float, help="the top fraction Top%% counts (default 0.05)")
    p.add_argument("--keep-fractions", help="with --store: comma-separated novelty budgets to replay the selection with")
    p.add_argument("--levels", default="0.05", help="with --keep-fractions: comma-separated p-value levels")
    p.add_argument("--workers", type=int, help="runs in parallel, one process each (default 1)")
    p.add_argument("--ray", action="store_true", help="run the runs as tasks on a local Ray started for the replay")
    p.add_argument("--ray-address", metavar="ADDR", help="run the runs as tasks on a running Ray cluster: 'auto', "
                   "'HOST:PORT' or 'ray://HOST:PORT'")
    p.add_argument("--out", required=True, help="replay folder (created; resumed when it exists)")
    add_common(p)
    p.set_defaults(run_command=cmd_replay)


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def spec_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], Path, str]:
    """The replay as a dict (a replay file, with the flags on top), the folder paths resolve in, the source name."""
    from controller.config import read_campaign_file

    base = Path.cwd()
    from controller.replay.spec import FLAGS

    data: dict[str, Any] = {}
    source = FLAGS
    if args.file:
        data = read_campaign_file(Path(args.file))
        base, source = Path(args.file).resolve().parent, args.file
    if args.data:
        if not args.inputs:
            raise UserError("--inputs: required with --data (comma-separated input columns)")
        if not args.objective:
            raise UserError("--objective: required with --data (COL, COL:min or COL:max)")
        data.setdefault("datasets", []).append({"file": str(Path(args.data).resolve()), "inputs": _csv(args.inputs),
                                                "objectives": args.objective, "duplicates": args.duplicates,
                                                "missing": args.missing})
    elif args.inputs or args.objective:
        raise UserError("--inputs/--objective: only with --data")
    for store in args.store:
        if not Path(store).is_file():
            raise UserError(f"--store {store}: no such store")
        data.setdefault("campaigns", []).append({"store": str(Path(store).resolve())})
    if args.policy_file:
        pf = read_campaign_file(Path(args.policy_file))
        if not isinstance(pf.get("policies"), list):
            raise UserError(f"{args.policy_file}: policies: expected a list of policies (kind, name, options)")
        data["policies"] = list(data.get("policies", [])) + pf["policies"]
    if args.policies:
        data["policies"] = list(data.get("policies", [])) + _csv(args.policies)
    for key in ("seeds", "budget", "initial", "top", "workers"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.ray or args.ray_address:
        ray = data.get("ray") if isinstance(data.get("ray"), dict) else {}
        data["ray"] = {**ray, **({"address": args.ray_address} if args.ray_address else {})}
    return data, base, source


def cmd_replay(args: argparse.Namespace) -> int:
    from controller.replay.spec import parse_spec

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder")
    if args.keep_fractions and not args.store:
        raise UserError("--keep-fractions: needs --store (a campaign that scored novelty)")
    if args.keep_fractions:
        _check_fractions(args)
    data, base, source = spec_from_args(args)
    if args.keep_fractions and "policies" not in data:
        return _selection_only(args, out)
    if "policies" not in data:
        raise UserError(f"{source}: policies: give --policies (e.g. random,sobol,botorch,ax) or --policy-file")
    spec = parse_spec(data, source)
    if spec.ray is not None and (args.ray_address or (args.ray and spec.ray.address is None)):
        spec.ray.name_settings("--ray-address", "--ray")
    from controller.replay import replay

    progress = _progress(args)
    outcome, results = replay(spec, out, base_dir=base, progress=progress)
    if args.keep_fractions:
        _selection_only(args, out)
    if args.json:
        calls = {status: outcome.count(status) for status in ("finished", "skipped", "failed")}
        print(json.dumps({**results, "this_call": calls}, allow_nan=False))
    elif not args.quiet:
        _print_results(results, outcome, out)
    _warn_fallbacks(results)
    failed = [r for r in outcome.runs if r.status == "failed"]
    for r in failed[:5]:
        print(f"error: run {r.key} failed: {r.error}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(outcome.runs)} runs failed; `aec replay ... --out {out}` again retries "
              "them", file=sys.stderr)
        return 3
    return 0


def _selection_only(args: argparse.Namespace, out: Path) -> int:
    from controller.replay.selection import selection_replay

    fractions, levels = _check_fractions(args)
    out.mkdir(parents=True, exist_ok=True)
    results = [selection_replay(Path(s), fractions, levels) for s in args.store]
    from controller.report_html import write_atomic

    write_atomic(out / "selection.json", json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    elif not args.quiet:
        from rich.console import Console
        from rich.table import Table

        for res in results:
            t = Table(title=f"{res['store']}: {res['scored']} scored, {res['kept_by_campaign']} kept by the campaign")
            for col in ("keep fraction", "level", "novel", "would keep", "also kept by the campaign"):
                t.add_column(col, justify="right")
            for row in res["alternatives"]:
                t.add_row(f"{row['keep_fraction']:g}", f"{row['level']:g}", str(row["novel"]), str(row["kept"]),
                          str(row["also_kept_by_campaign"]))
            Console(width=160).print(t)
            for note in res.get("notes", []):
                print(f"note: {note}")
    return 0


def _check_fractions(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    fractions = _floats(args.keep_fractions, "--keep-fractions")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise UserError(f"--keep-fractions: expected fractions in (0, 1], got {args.keep_fractions!r}")
    levels = _floats(args.levels, "--levels")
    if not levels or any(not 0 < v < 1 for v in levels):
        raise UserError(f"--levels: expected comma-separated p-value levels in (0, 1), got {args.levels!r}")
    return fractions, levels


def _progress(args: argparse.Namespace):
    from controller.replay.progress import LineProgress, RichProgress, SilentProgress

    if args.quiet or args.json:
        return SilentProgress()
    return RichProgress() if sys.stderr.isatty() else LineProgress(sys.stderr)


def _print_results(results: dict[str, Any], outcome, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    for name, prob in results["problems"].items():
        n = prob["budget"]
        has_top = "pool_size" in prob
        seq = any(r.get("reward_fraction_mean") for r in prob["policies"].values())
        title = f"{name}: {n} measurements per run" + (
            f", pool of {prob['pool_size']}, top {prob['top_count']} ({results['top']:.0%})" if has_top else "")
        t = Table(title=title)
        cols = ["policy", "runs", "fallbacks"] + (["Top% at budget", "EF at budget", "AF at Top% 0.5"] if has_top else []) + [
            "best (median)" if len(prob["objectives"]) == 1 else "hypervolume (median)"] + (
            ["reward fraction (mean)"] if seq else []) + ["s/decision"]
        for c in cols:
            t.add_column(c, justify="right")
        for pol, r in prob["policies"].items():
            row = [pol, f"{r.get('finished', 0)}/{r['runs']}", str(r.get("fallbacks", 0))]
            if has_top:
                tf = r.get("top_fraction_mean")
                row += [_f(tf[-1]) if tf else "-", _f(r.get("enhancement_factor", {}).get("at_budget")),
                        _f(_af_at(r.get("acceleration_factor"), 0.5))]
            curve = r.get("best_so_far_median") or r.get("hypervolume_median")
            row += [_f(curve[-1]) if curve else "-"] + ([_f(r.get("reward_fraction_at_budget"))] if seq else []) + [
                _f(r.get("seconds_per_decision_median"))]
            t.add_row(*row)
        console.print(t)
        for note in prob.get("notes", []):
            console.print(f"note: {note}")
    if outcome.warnings:
        print(f"library warnings: {outcome.warnings} in the runs (counted, not shown)", file=sys.stderr)
    skipped = outcome.count("skipped")
    print(f"results: {out / 'results.json'}" + (f" ({skipped} finished run(s) reused)" if skipped else "")
          + f"; `aec report {out}` draws them", file=sys.stderr)


def _warn_fallbacks(results: dict[str, Any]) -> None:
    """One stderr line per problem whose runs fell back (e.g. a model that could not be fitted: Sobol instead)."""
    for name, prob in results["problems"].items():
        fell = {pol: r.get("fallbacks", 0) for pol, r in prob["policies"].items() if r.get("fallbacks", 0)}
        if fell:
            print(f"warning: {name}: runs fell back to another proposal method: "
                  + ", ".join(f"{pol} {n} time(s)" for pol, n in fell.items())
                  + " (the fallbacks column; details in each run's journal, `aec show RUN.db`)", file=sys.stderr)


def _af_at(af: dict[str, Any] | None, level: float) -> float | None:
    """AF at the first level >= `level` that the policy reached."""
    if not af:
        return None
    return next((f for a, f in zip(af["top"], af["af"]) if a >= level - 1e-12), None)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}"
