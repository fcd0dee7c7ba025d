"""`aec daemon FILE` / `aec daemon --resume STORE`: a campaign as a service with its control API.

SIGTERM (or SIGINT) finishes the trials in flight and exits 0; a second one abandons them (aborting
the instrument; `aec daemon --resume` measures them again). A second daemon on the same store is
refused by the store's writer lock with one line and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from controller.errors import UserError

log = logging.getLogger("aec.daemon")

SWITCH_INTERVAL = 0.001
"""Seconds a busy thread holds the GIL before another may run (Python's default is 0.005): the API
thread waits at most this long for a campaign loop that is busy journaling hundreds of trials a second."""


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("daemon", help="run a campaign as a service with a control API (README: Operations)")
    p.add_argument("file", nargs="?", help="campaign file (.yaml or .json)")
    p.add_argument("--resume", metavar="STORE", help="continue the campaign in STORE as a service")
    p.add_argument("--store", help="store path for a new campaign (overrides the file's 'store')")
    p.add_argument("--host", help="address of the control API (default 127.0.0.1, or daemon.host)")
    p.add_argument("--port", type=int, help="port of the control API (default 8765, or daemon.port; 0: any free)")
    p.add_argument("--token-file", help="file holding the bearer token (else $AEC_DAEMON_TOKEN, else STORE.token)")
    add_common(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from controller.config import DaemonConfig
    from controller.daemon.logs import use_json_lines

    if bool(args.file) == bool(args.resume):
        raise UserError("daemon: give a campaign FILE or --resume STORE (exactly one)")
    if args.resume and args.store:
        raise UserError("daemon: --store is for a new campaign; --resume STORE names the store")
    _options(DaemonConfig(), args)  # a bad --port is refused before a store is created
    campaign = _open_campaign(args)
    use_json_lines()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        return _serve(campaign, args)
    finally:
        campaign.close()


def _open_campaign(args: argparse.Namespace):
    from controller.campaign import Campaign

    if args.resume:
        return Campaign.resume(args.resume)
    from controller.preflight import load_config
    from controller.store import Store

    config = load_config(args.file, {"store": args.store} if args.store else {})
    path = config.store_path()
    if path.is_file() and path.stat().st_size > 0:
        try:
            with Store(path) as store:
                held = len(store.trials())
        except UserError:
            held = 0
        if held:
            raise UserError(f"{path} already holds a campaign ({held} trials); `aec daemon --resume {path}` continues it")
    return Campaign(config)


def _serve(campaign, args: argparse.Namespace) -> int:
    import uvicorn

    from controller.config import DaemonConfig
    from controller.daemon.api import create_app
    from controller.daemon.service import DaemonService

    options = _options(campaign.config.daemon or DaemonConfig(), args)
    token, source = resolve_token(options.token_file and str(campaign.config.resolve(options.token_file)),
                                  campaign.store.path)
    sock = _listen(options.host, options.port)
    service = DaemonService(campaign, options)
    server = uvicorn.Server(uvicorn.Config(create_app(service, token), log_config=None, access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=2))
    api = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="aec-api", daemon=True)
    api.start()
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    log.info("control API on %s (token: %s)", url, source, extra={"event": "listening", "reason": url})
    signals = {"count": 0}

    def on_signal(signum: int, frame: Any) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signals["count"] == 1:
            service.stop(reason=f"{name}: finishing the trials in flight; send it again to abandon them")
        else:
            service.stop(abandon=True, reason=f"second {name}: abandoning the trials in flight")

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.start()
        while not service.done.wait(0.5):
            if not api.is_alive() and not signals["count"]:  # a daemon nobody can steer stops (systemd restarts it)
                log.error("the control API stopped; stopping the campaign", extra={"event": "error"})
                signals["count"] = 1
                service.exit_code = 1
                service.stop(reason="the control API stopped")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        server.should_exit = True
        api.join(timeout=5)
        service.close()
    return service.exit_code


def _options(options, args: argparse.Namespace):
    """The campaign file's `daemon:` section with the command line's --host, --port and --token-file on top."""
    from pydantic import ValidationError

    from controller.config import DaemonConfig, validation_problems

    token_file = args.token_file and str(Path(args.token_file).resolve())  # the command line's is relative to the cwd
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("token_file", token_file)) if v is not None}
    try:
        return DaemonConfig.model_validate({**options.model_dump(), **changes})
    except ValidationError as exc:
        raise UserError("daemon: bad option", [f"daemon.{p}" for p in validation_problems(exc)]) from None


def resolve_token(token_file: str | None, store: Path) -> tuple[str, str]:
    """(token, where it came from): the token file, else $AEC_DAEMON_TOKEN, else STORE.token (made once, mode 0600)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"daemon.token_file: {token_file}: {exc.strerror}") from None
        if not token:
            raise UserError(f"daemon.token_file: {token_file} is empty; expected a token")
        return token, f"file {token_file}"
    token = os.environ.get("AEC_DAEMON_TOKEN", "").strip()
    if token:
        return token, "$AEC_DAEMON_TOKEN"
    path = store.with_name(store.name + ".token")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), f"file {path}"


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket for the API (port 0: any free one), or one line saying why not."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"daemon: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock
