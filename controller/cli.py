"""The `aec` command: a thin layer over the Python API (Campaign, load_config, Store)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from controller.errors import UserError
from policies.base import PolicyFallbackError

EXIT_USER = 2
EXIT_STRICT = 4  # a policy would have fallen back and strict mode forbids it


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug detail on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aec", description="Autonomous experiment controller.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a campaign file")
    p.add_argument("file", help="campaign file (.yaml or .json)")
    p.add_argument("--seed", type=int, help="override the file's seed")
    p.add_argument("--store", help="store path (overrides the file's 'store')")
    p.add_argument("--trials", type=int, help="override budget.trials")
    _add_common(p)

    p = sub.add_parser("resume", help="continue a stopped or crashed campaign from its store")
    p.add_argument("store")
    p.add_argument("--trials", type=int, help="raise (or set) the trial budget")
    _add_common(p)

    p = sub.add_parser("validate", help="check a campaign file; exit 2 with one line per problem")
    p.add_argument("file")
    _add_common(p)

    p = sub.add_parser("show", help="table of trials and the best so far, or the Pareto set")
    p.add_argument("store")
    p.add_argument("--limit", type=int, default=20, help="rows of the trial table (0 = all)")
    _add_common(p)

    p = sub.add_parser("export", help="trials as CSV or JSON")
    p.add_argument("store")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", help="write to this file instead of stdout")
    _add_common(p)

    p = sub.add_parser("report", help="write figures and an HTML report beside the store")
    p.add_argument("store")
    p.add_argument("--out", help="folder for the report (default STORE.report/; needed for a store on read-only media)")
    _add_common(p)

    p = sub.add_parser("triage", help="score arrays for novelty offline and keep a budgeted subset")
    p.add_argument("--reference", required=True, help="known data: .npy, .npz or .h5 (one row per event)")
    p.add_argument("--input", required=True, help="data to triage, same format and row shape")
    p.add_argument("--keep", type=float, required=True, help="fraction of input rows to keep (0-1)")
    p.add_argument("--out", required=True, help="folder for scores.npy, pvalues.npy, kept.npy")
    p.add_argument("--level", type=float, default=0.05, help="p-value below which a row is novel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="HDF5 dataset name (default: the first 2-D dataset)")
    _add_common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "show": cmd_show,
               "export": cmd_export, "report": cmd_report, "triage": cmd_triage}[args.command]
    try:
        return handler(args)
    except UserError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER
    except PolicyFallbackError as exc:
        print(f"error: {exc}; the store keeps every trial so far (`aec resume` continues)", file=sys.stderr)
        return EXIT_STRICT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# commands -------------------------------------------------------------------------------------


def _reporter(args: argparse.Namespace):
    from controller.progress import RichReporter, SilentReporter

    return SilentReporter() if (args.quiet or args.json) else RichReporter()


def cmd_run(args: argparse.Namespace) -> int:
    from controller.campaign import Campaign
    from controller.config import load_config

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.trials is not None:
        overrides["budget.trials"] = args.trials
    if args.store is not None:
        overrides["store"] = args.store
    config = load_config(args.file, overrides)
    campaign = Campaign(config, reporter=_reporter(args))
    return _run(campaign, args)


def cmd_resume(args: argparse.Namespace) -> int:
    from controller.campaign import Campaign

    campaign = Campaign.resume(args.store, reporter=_reporter(args), trials=args.trials)
    return _run(campaign, args)


def _run(campaign, args: argparse.Namespace) -> int:
    from controller.report import write_figures

    try:
        summary = campaign.run()
        summary.figures = [str(p) for p in write_figures(campaign.store)]
    finally:
        campaign.close()
    if args.json:
        print(_dumps(summary.to_json()))
    elif not args.quiet:
        _print_summary(summary, campaign)
    _warn_fallbacks(summary.fallbacks, summary.completed + summary.failed, summary.store)
    return 0 if summary.stopped != "interrupted" else 130


def _warn_fallbacks(fallbacks: dict[str, Any], trials: int, store: str) -> None:
    """One line on stderr, whatever --quiet or --json say: a fallback changes what the campaign means."""
    if fallbacks["count"]:
        print(f"warning: {fallbacks['count']} proposal(s) of this campaign were made by a fallback, not the policy "
              f"asked for ({len(fallbacks['reasons'])} reason(s)); `aec show {store}` lists them", file=sys.stderr)


def _print_summary(summary, campaign) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"campaign {summary.name}: {summary.stopped}", show_header=False)
    table.add_row("trials", f"{summary.completed} completed, {summary.failed} failed")
    if summary.best is not None:
        metric = campaign.objectives[0].metric
        table.add_row(f"best {metric}", f"{summary.best['metrics'][metric]:.6g} (trial {summary.best['id']})")
        table.add_row("at", ", ".join(f"{k}={_short(v)}" for k, v in summary.best["params"].items()))
    if summary.pareto:
        hv = "n/a" if summary.hypervolume is None else f"{summary.hypervolume:.6g}"
        table.add_row("Pareto set", f"{len(summary.pareto)} trials, hypervolume {hv}")
    _fallback_rows(table, summary.fallbacks)
    table.add_row("store", summary.store)
    for fig in summary.figures:
        table.add_row("figure", fig)
    console.print(table)


def _fallback_rows(table, fallbacks: dict[str, Any]) -> None:
    """Rows of a summary table: how many proposals fell back, and why (trial ids as ranges)."""
    table.add_row("fallbacks", str(fallbacks["count"]) if fallbacks["count"] else "none")
    for r in fallbacks["reasons"]:
        table.add_row(f"  {r['count']} x", f"{r['reason']} (trials {r['trials']})")


def cmd_validate(args: argparse.Namespace) -> int:
    from controller.config import load_config

    config = load_config(args.file)
    summary = {"file": args.file, "name": config.name, "objectives": [o.metric for o in config.objectives],
               "policy": config.policy.kind, "instrument": config.instrument.kind, "valid": True}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"ok: {args.file} (campaign {config.name!r}, policy {config.policy.kind}, "
              f"instrument {config.instrument.kind}, {len(config.objectives)} objective(s))")
    return 0


def _open_store(path: str):
    from controller.store import Store

    return Store(path)


def _problem_of(store):
    from controller.report import _problem

    return _problem(store.get_meta("config"))


def cmd_show(args: argparse.Namespace) -> int:
    from controller.results import FallbackTally, best_trial, pareto_summary

    with _open_store(args.store) as store:
        records = store.trials()
        objectives, constraints = _problem_of(store)
        name = store.get_meta("config")["name"]
        counts: dict[str, int] = {}
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
        out: dict[str, Any] = {"name": name, "store": args.store, "trials": len(records), "status": counts,
                               "fallbacks": FallbackTally.from_records(records).to_json()}
        if len(objectives) == 1:
            best = best_trial(records, objectives[0], constraints)
            out["best"] = None if best is None else best.to_json()
        else:
            ps = pareto_summary(records, objectives, constraints)
            out["pareto"] = [r.to_json() for r in ps.trials]
            out["hypervolume"] = ps.hypervolume
            out["reference_point"] = ps.reference
    if args.json:
        print(_dumps(out))
        return 0
    if args.quiet:
        return 0
    _print_show(out, records, objectives, args.limit)
    return 0


def _print_show(out: dict[str, Any], records, objectives, limit: int) -> None:
    from rich.table import Table

    console = _console()
    metrics = [o.metric for o in objectives]
    params = list(records[0].params) if records else []
    shown = records if limit <= 0 else records[-limit:]
    table = Table(title=f"{out['name']}: {out['trials']} trials " + ", ".join(f"{v} {k}" for k, v in out["status"].items()))
    for col in ["id", "status", "att.", *params, *metrics]:
        table.add_column(col, justify="right")
    for r in shown:
        table.add_row(str(r.id), r.status, str(r.attempts), *[_short(r.params.get(p)) for p in params],
                      *[_short(r.metrics.get(m)) for m in metrics])
    console.print(table)
    if "best" in out and out["best"]:
        b = out["best"]
        console.print(f"best {metrics[0]} = {b['metrics'][metrics[0]]:.6g} (trial {b['id']}) at "
                      + ", ".join(f"{k}={_short(v)}" for k, v in b["params"].items()))
    if out.get("pareto"):
        pt = Table(title=f"Pareto set: {len(out['pareto'])} trials, hypervolume {out['hypervolume']:.6g}")
        for col in ["id", *metrics]:
            pt.add_column(col, justify="right")
        for r in out["pareto"]:
            pt.add_row(str(r["id"]), *[_short(r["metrics"].get(m)) for m in metrics])
        console.print(pt)
    fb = out["fallbacks"]
    if fb["count"]:
        ft = Table(title=f"fallbacks: {fb['count']} proposal(s) not made by the policy asked for", show_header=True)
        for col in ["count", "reason", "trials"]:
            ft.add_column(col)
        for r in fb["reasons"]:
            ft.add_row(str(r["count"]), r["reason"], r["trials"])
        console.print(ft)
    else:
        console.print("fallbacks: none")


def cmd_export(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        rows = [r.to_json() for r in store.trials()]
    if args.format == "json":
        text = _dumps(rows)
    else:
        text = _to_csv(rows)
    if args.out:
        Path(args.out).write_text(text)
        if not args.quiet and not args.json:
            print(f"wrote {len(rows)} trials to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    return 0


def _to_csv(rows: list[dict[str, Any]]) -> str:
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    extra = ["novelty", "pvalue", "kept", "decision", "data", "error", "worker", "proposed_at", "started_at", "finished_at"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "status", "attempts", *params, *metrics, *extra])
    for r in rows:
        w.writerow([r["id"], r["status"], r["attempts"], *[r["params"].get(p, "") for p in params],
                    *[r["metrics"].get(m, "") for m in metrics], *[_csv(r.get(k)) for k in extra]])
    return buf.getvalue()


def _csv(v: Any) -> Any:
    return "" if v is None else v


def cmd_report(args: argparse.Namespace) -> int:
    from controller.report import write_html

    with _open_store(args.store) as store:
        page = write_html(store, Path(args.out) if args.out else None)
    if args.json:
        print(_dumps({"report": str(page)}))
    elif not args.quiet:
        print(f"report: {page}")
    return 0


def cmd_triage(args: argparse.Namespace) -> int:
    from controller.triage import triage

    if not 0.0 < args.keep <= 1.0:
        raise UserError(f"--keep: expected a fraction in (0, 1], got {args.keep}")
    summary = triage(Path(args.reference), Path(args.input), args.keep, Path(args.out), level=args.level,
                     seed=args.seed, progress=not (args.quiet or args.json), dataset=args.dataset)
    if args.json:
        print(_dumps(summary))
    elif not args.quiet:
        print(" ".join(f"{k}={_short(v)}" for k, v in summary.items()))
    return 0


def _dumps(value: Any) -> str:
    """Strict JSON (null, never NaN or Infinity), which jq and browsers accept."""
    from controller.store import json_safe

    return json.dumps(json_safe(value), default=str, allow_nan=False)


def _console():
    """A rich console for stdout; wide when stdout is a file or pipe, so tables are not truncated."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
