"""The `aec` command: a thin layer over the Python API (Campaign, load_config, Store).

Output rule, the same for every command: stdout carries the command's result (a table, or with
`--json` one JSON value); stderr carries progress, warnings and `error: ...` lines. `--quiet`
suppresses everything but the requested data (`export` without `--out`), warnings and errors.
Heavy modules (torch, via the campaign and the policies) are imported inside the commands, so
`aec --help` is quick.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import logging
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from controller.errors import UserError

EXIT_USER = 2
EXIT_FAILED = 3  # the campaign ran but measured nothing (every trial failed) or stopped on max_failures
EXIT_STRICT = 4  # a policy would have fallen back and strict mode forbids it
AEC_LOGGERS = ("aec", "controller", "policies", "instruments", "simulators")  # what --verbose shows at DEBUG


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print nothing but the requested data (export without --out), warnings and errors")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="log aec's debug detail and library warnings on stderr")


# Commands that live in their own module: each has `add_parser(sub, add_common)` (cheap to import, so
# `aec --help` stays fast) and sets `run_command` (a function of args -> exit code that imports what it
# needs when it runs) with `p.set_defaults(run_command=...)`.
COMMAND_MODULES: tuple[str, ...] = ("controller.replay.cli", "controller.daemon.cli", "controller.train_rl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aec", description="Autonomous experiment controller.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a campaign file")
    p.add_argument("file", help="campaign file (.yaml or .json)")
    p.add_argument("--seed", type=int, help="override the file's seed")
    p.add_argument("--store", help="store path (overrides the file's 'store')")
    p.add_argument("--trials", type=int, help="override budget.trials")
    p.add_argument("--figures", action="store_true", help="also write the figures (as `aec report` does)")
    _add_common(p)

    p = sub.add_parser("resume", help="continue a stopped or crashed campaign from its store")
    p.add_argument("store")
    p.add_argument("--trials", type=int, help="raise (or set) the trial budget")
    p.add_argument("--figures", action="store_true", help="also write the figures (as `aec report` does)")
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

    p = sub.add_parser("report", help="write an HTML report (and figures) of a store, or of a replay folder")
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
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub, _add_common)
    return parser


class WarningTally(logging.Handler):
    """Counts library warnings (`warnings.warn`, routed to the `py.warnings` logger) for the run summary."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _Logging:
    """stderr logging for one command: WARNING for everyone, DEBUG for aec's own loggers with --verbose;
    library warnings captured into the log (shown only with --verbose) and counted. Undone on exit."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.tally = WarningTally()

    def __enter__(self) -> WarningTally:
        root, pyw = logging.getLogger(), logging.getLogger("py.warnings")
        self._handler = logging.StreamHandler(sys.stderr)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._saved = (root.level, pyw.propagate, [logging.getLogger(n).level for n in AEC_LOGGERS])
        if not root.handlers:  # in a program that configured logging itself (or pytest), keep its handlers
            root.addHandler(self._handler)
        else:
            self._handler = None
        root.setLevel(logging.WARNING)
        for name in AEC_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG if self.verbose else logging.NOTSET)
        pyw.addHandler(self.tally)
        pyw.propagate = self.verbose
        logging.captureWarnings(True)
        return self.tally

    def __exit__(self, *exc: Any) -> None:
        root, pyw = logging.getLogger(), logging.getLogger("py.warnings")
        logging.captureWarnings(False)
        pyw.removeHandler(self.tally)
        level, pyw.propagate, levels = self._saved
        root.setLevel(level)
        for name, lvl in zip(AEC_LOGGERS, levels):
            logging.getLogger(name).setLevel(lvl)
        if self._handler is not None:
            root.removeHandler(self._handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "show": cmd_show,
                "export": cmd_export, "report": cmd_report, "triage": cmd_triage}
    handler = handlers.get(args.command) or getattr(args, "run_command")
    with _Logging(args.verbose) as tally:
        args.warning_tally = tally
        try:
            return handler(args)
        except UserError as exc:
            return _errors(exc.problems)
        except sqlite3.DatabaseError as exc:  # the store's own checks name the event; this is the backstop
            return _errors([f"{getattr(args, 'store', None) or 'the store'}: the store is damaged ({exc})"])
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return _errors([f"{where}{exc.strerror or exc}"])
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if not _is_fallback_error(exc):
                raise
            print(f"error: {exc}; the store keeps every trial so far (`aec resume` continues)", file=sys.stderr)
            return EXIT_STRICT


def _errors(problems: Sequence[str]) -> int:
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_USER


def _is_fallback_error(exc: BaseException) -> bool:
    """Whether `exc` is a PolicyFallbackError, without importing policies (and torch) for `aec --help`:
    one can only have been raised if policies.base is already imported."""
    base = sys.modules.get("policies.base")
    return base is not None and isinstance(exc, base.PolicyFallbackError)


# commands -------------------------------------------------------------------------------------


def _reporter(args: argparse.Namespace):
    """Silent under --quiet/--json; a rich bar on a terminal; plain progress lines when stderr is a file or pipe."""
    from controller.progress import LogReporter, RichReporter, SilentReporter

    if args.quiet or args.json:
        return SilentReporter()
    if sys.stderr.isatty():
        return RichReporter()
    return LogReporter(stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.preflight import load_config

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.trials is not None:
        overrides["budget.trials"] = args.trials
    if args.store is not None:
        overrides["store"] = args.store
    config = load_config(args.file, overrides)
    if _already_finished(config):
        return _already_done(args, config.store_path())
    from controller.campaign import Campaign

    campaign = Campaign(config, reporter=_reporter(args))
    return _run(campaign, args)


def _already_finished(config) -> bool:
    """True when the config's store holds this very campaign (same stored config) with its trial budget done,
    so running the README's first command twice shows the result instead of refusing."""
    from controller.config import config_to_dict
    from controller.store import Store

    path = config.store_path()
    if config.budget.trials is None or not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with Store(path) as store:
            stored = store.get_meta("config")
            completed = sum(r.status == "completed" for r in store.trials())
    except UserError:
        return False  # not a store of this campaign: Campaign refuses (or reuses an empty one) as before
    wanted = json.loads(json.dumps(config_to_dict(config), default=str))
    return stored == wanted and completed >= config.budget.trials


def _already_done(args: argparse.Namespace, path: Path) -> int:
    out, records, objectives = _show_data(str(path))
    out["already_done"] = True
    if args.json:
        print(_dumps(out))
    elif not args.quiet:
        _print_show(out, records, objectives, 20)
        print(f"already done: {path} holds this campaign, finished ({out['status'].get('completed', 0)} trials "
              f"completed); `aec resume {path} --trials N` extends it, `--store NEW.db` starts a new one",
              file=sys.stderr)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from controller.campaign import Campaign

    campaign = Campaign.resume(args.store, reporter=_reporter(args), trials=args.trials)
    return _run(campaign, args)


def _run(campaign, args: argparse.Namespace) -> int:
    """Run, then print the summary; exit 3 with a reason (even under --quiet) when nothing could be measured."""
    try:
        summary = campaign.run()
        if args.figures:
            from controller.report import write_figures

            summary.figures = [str(p) for p in write_figures(campaign.store)]
        first_error = next((f"trial {r.id}: {r.error}" for r in campaign.store.trials()
                            if r.status == "failed" and r.error), None)
    finally:
        campaign.close()
    summary.library_warnings = args.warning_tally.count
    if args.json:
        print(_dumps(summary.to_json()))
    elif not args.quiet:
        _print_summary(summary, campaign)
    _warn_fallbacks(summary.fallbacks, summary.completed + summary.failed, summary.store)
    for line in getattr(summary, "degraded", []):
        print(f"warning: the policy ran degraded: {line}", file=sys.stderr)
    if summary.stopped == "interrupted":
        return 130
    reason = campaign_failure(summary, first_error)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def campaign_failure(summary, first_error: str | None = None) -> str | None:
    """Why a finished run measured nothing useful, in one line; None when it did."""
    hint = f" (first: {first_error})" if first_error else ""
    if summary.completed == 0 and summary.failed > 0:
        return f"campaign {summary.name}: all {summary.failed} trials failed{hint}; `aec show {summary.store}` lists them"
    if "max_failures" in summary.stopped:
        return f"campaign {summary.name} stopped: {summary.stopped}{hint}; `aec show {summary.store}` lists them"
    return None


def _warn_fallbacks(fallbacks: dict[str, Any], trials: int, store: str) -> None:
    """One line on stderr, whatever --quiet or --json say: a fallback changes what the campaign means."""
    if fallbacks["count"]:
        print(f"warning: {fallbacks['count']} proposal(s) or measurement(s) of this campaign were made by a fallback "
              f"(not the policy asked for, or a simulator on the CPU, not its GPU; {len(fallbacks['reasons'])} reason(s)); "
              f"`aec show {store}` lists them", file=sys.stderr)


POLICY_WAIT_HINT = 0.05
"""Above this fraction of the workers' time spent waiting for proposals, the summary says what would help."""


def workers_line(workers: dict[str, Any]) -> str:
    """'8 busy 90.7% of 4.4 s; 1.2 worker-s (3.4%) waiting for the policy', and above POLICY_WAIT_HINT what would
    help: more lookahead when the policy can keep pace on average, else nothing but a faster policy or fewer workers."""
    line = (f"{workers['workers']} busy {workers['utilisation']:.1%} of {workers['span_s']:.1f} s; "
            f"{workers['waited_for_policy_s']:.1f} worker-s ({workers['waited_for_policy']:.1%}) waiting for the policy")
    if workers["waited_for_policy"] <= POLICY_WAIT_HINT:
        return line
    pace = workers.get("policy_s_per_point")
    per_trial = workers["busy_s"] / workers["measured"] if workers["measured"] else 0.0
    if pace and per_trial < workers["workers"] * pace:
        return line + (f"; the policy makes a point in {pace * 1000:.3g} ms and the workers use one every "
                       f"{per_trial / workers['workers'] * 1000:.3g} ms: the policy sets the pace (fewer workers would do as much)")
    return line + (f"; a larger executor.lookahead (now {workers['lookahead']}) lets the policy work further ahead "
                   "(staler proposals: benchmarks/README.md, Ray scaling)")


def _print_summary(summary, campaign, console=None) -> None:
    from rich.table import Table

    console = console or _console()
    table = Table(title=f"campaign {summary.name}: {summary.stopped}", show_header=False)
    table.add_row("trials", f"{summary.completed} completed, {summary.failed} failed")
    if summary.best is not None:
        metric = campaign.objectives[0].metric
        table.add_row(f"best {metric}", f"{summary.best['metrics'][metric]:.6g} (trial {summary.best['id']})")
        table.add_row("at", ", ".join(f"{k}={_short(v)}" for k, v in summary.best["params"].items()))
    if summary.pareto:
        hv = "n/a" if summary.hypervolume is None else f"{summary.hypervolume:.6g}"
        table.add_row("Pareto set", f"{len(summary.pareto)} trials, hypervolume {hv} (below)")
    _fallback_rows(table, summary.fallbacks)
    for line in getattr(summary, "degraded", []):
        table.add_row("degraded", line)
    workers = getattr(summary, "workers", None)
    if workers and workers["workers"] > 1 and workers["span_s"] > 0:
        table.add_row("workers", workers_line(workers))
    warned = getattr(summary, "library_warnings", 0)
    if warned:
        table.add_row("library warnings", f"{warned} (`--verbose` shows them)")
    table.add_row("store", summary.store)
    for fig in summary.figures:
        table.add_row("figure", fig)
    console.print(table)
    if summary.pareto:
        console.print(_pareto_table(summary.pareto, [o.metric for o in campaign.objectives], summary.hypervolume))


def _pareto_table(pareto: list[dict[str, Any]], metrics: list[str], hypervolume: float | None):
    """The Pareto set as a table: each front trial's id, parameters and objectives, best first objective first."""
    from rich.table import Table

    params = list(dict.fromkeys(k for r in pareto for k in r["params"]))
    hv = "n/a" if hypervolume is None else f"{hypervolume:.6g}"
    title = f"Pareto set: {len(pareto)} trials, hypervolume {hv}"
    table = Table(title=title, min_width=len(title))
    for col in ["id", *params, *metrics]:
        table.add_column(col, justify="right")
    for r in sorted(pareto, key=lambda r: (r["metrics"].get(metrics[0]) is None, r["metrics"].get(metrics[0]) or 0)):
        table.add_row(str(r["id"]), *[_short(r["params"].get(p)) for p in params],
                      *[_short(r["metrics"].get(m)) for m in metrics])
    return table


def _fallback_rows(table, fallbacks: dict[str, Any]) -> None:
    """Rows of a summary table: how many proposals fell back, and why (trial ids as ranges)."""
    table.add_row("fallbacks", str(fallbacks["count"]) if fallbacks["count"] else "none")
    for r in fallbacks["reasons"]:
        table.add_row(f"  {r['count']} x", f"{r['reason']} (trials {r['trials']})")


def cmd_validate(args: argparse.Namespace) -> int:
    from controller.preflight import load_config

    try:
        config = load_config(args.file)
    except UserError as exc:
        if args.json:
            print(_dumps({"file": args.file, "valid": False, "problems": exc.problems}))
        raise
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


def _show_data(path: str):
    """What `aec show` reports: a JSON-ready dict, the trial records and the objectives."""
    from controller.report import _problem
    from controller.results import FallbackTally, best_trial, pareto_summary

    with _open_store(path) as store:
        config = store.config()
        records = store.trials()
        objectives, constraints = _problem(config)
        counts: dict[str, int] = {}
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
        out: dict[str, Any] = {"name": config["name"], "store": path, "trials": len(records), "status": counts,
                               "fallbacks": FallbackTally.from_records(records).to_json()}
        if len(objectives) == 1:
            best = best_trial(records, objectives[0], constraints)
            out["best"] = None if best is None else best.to_json()
        else:
            ps = pareto_summary(records, objectives, constraints)
            out["pareto"] = [r.to_json() for r in ps.trials]
            out["hypervolume"] = ps.hypervolume
            out["reference_point"] = ps.reference
    return out, records, objectives


def cmd_show(args: argparse.Namespace) -> int:
    out, records, objectives = _show_data(args.store)
    if args.json:
        print(_dumps(out))
    elif not args.quiet:
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
        console.print(_pareto_table(out["pareto"], metrics, out["hypervolume"]))
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
    """The trials as JSON or CSV: on stdout (the data is the output, --quiet or not), or into --out."""
    with _open_store(args.store) as store:
        store.config()  # a store without its configuration is damaged: say so rather than export half of it
        rows = [r.to_json() for r in store.trials()]
    text = _dumps(rows) if args.format == "json" else _to_csv(rows)
    text += "" if text.endswith("\n") else "\n"
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    _write_file(out, text)
    if args.json:
        print(_dumps({"wrote": str(out), "format": args.format, "trials": len(rows)}))
    elif not args.quiet:
        print(f"wrote {len(rows)} trials to {out}", file=sys.stderr)
    return 0


def _write_file(out: Path, text: str) -> None:
    """Write `text` to `out`, or a UserError naming --out; a partly written file (disk full) is removed."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    try:
        with open(out, "w") as fh:
            fh.write(text)
    except OSError as exc:
        if out.is_file():
            out.unlink(missing_ok=True)
        raise UserError(f"--out {out}: cannot write ({exc.strerror or exc})") from None


TRIAL_COLUMNS = ["novelty", "pvalue", "kept", "decision", "data", "error", "worker",
                 "proposed_at", "started_at", "finished_at"]
_TIMES = {"proposed_at", "started_at", "finished_at"}


def _to_csv(rows: list[dict[str, Any]]) -> str:
    """One row per trial. Column names are unique: a parameter or metric whose name is also one of aec's own
    columns (id, status, attempts, novelty, ...) or a name of the other kind is written `param.NAME` or
    `metric.NAME`. Times are ISO 8601 in UTC (2026-12-01T15:04:05.123Z)."""
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    own = {"id", "status", "attempts", *TRIAL_COLUMNS}
    pcols = [f"param.{p}" if p in own or p in metrics else p for p in params]
    mcols = [f"metric.{m}" if m in own or m in params else m for m in metrics]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "status", "attempts", *pcols, *mcols, *TRIAL_COLUMNS])
    for r in rows:
        w.writerow([r["id"], r["status"], r["attempts"], *[_csv(r["params"].get(p)) for p in params],
                    *[_csv(r["metrics"].get(m)) for m in metrics],
                    *[_iso(r.get(k)) if k in _TIMES else _csv(r.get(k)) for k in TRIAL_COLUMNS]])
    return buf.getvalue()


def _iso(t: float | None) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, e.g. 2026-12-01T15:04:05.123Z."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv(v: Any) -> Any:
    return "" if v is None else v


def cmd_report(args: argparse.Namespace) -> int:
    from controller.report import write_html

    if Path(args.store).is_dir():  # a replay folder (aec replay --out DIR)
        from controller.report_replay import write_replay_html

        page = write_replay_html(Path(args.store), Path(args.out) if args.out else None)
    else:
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
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a file; give a folder for scores.npy, pvalues.npy and kept.npy")
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
