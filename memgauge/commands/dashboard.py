"""`memgauge dashboard [--store URL] [--port P] [--host H]`: the Streamlit dashboard.

Safe defaults (RELIABILITY F17): it listens on 127.0.0.1 only; binding anywhere else needs
--host and prints a warning; XSRF protection is on; the browser never receives tracebacks or
exception details (they go to this terminal); Streamlit's usage statistics are off.  The store
URL travels in $MEMGAUGE_STORE, never on a command line that `ps` shows, and is printed
redacted (F18)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(kw_only=True)
class Launch:
    """What `memgauge dashboard` runs: argv, the environment additions, warnings to print."""

    argv: list[str]
    env: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    url: str = ""


def build_launch(*, store: str | None, port: int, host: str | None) -> Launch:
    """The streamlit command line for these options (no side effects; tested directly)."""
    from memgauge.results.store import ENV_VAR, redact, resolve_url

    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    address = host or "127.0.0.1"
    warnings = []
    if host is not None and host not in LOOPBACK:
        warnings.append(
            f"the dashboard will listen on {host}: anyone who can reach this machine on port "
            f"{port} can read the results store ({redact(resolve_url(store))}). It has no "
            f"login; put it behind an authenticating proxy or use an SSH tunnel to "
            f"127.0.0.1 instead."
        )
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.enableXsrfProtection",
        "true",
        "--server.enableCORS",
        "true",
        # 'none': only a generic message reaches the browser; types, messages and tracebacks
        # go to this terminal.  (The old boolean `false` now means "stacktrace", which would
        # still show tracebacks.)
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--global.developmentMode",
        "false",
    ]
    shown = f"[{address}]" if ":" in address else address
    return Launch(
        argv=argv,
        env={ENV_VAR: resolve_url(store)},
        warnings=warnings,
        url=f"http://{shown}:{port}",
    )


def _check_store(store: str | None) -> None:
    """An SQLite store that is not memgauge's, newer or damaged is refused before the server
    starts (read-only: nothing is written).  A missing or empty file is fine (the pages say what
    to run), and a server store is left to the pages (which say when it cannot be reached)."""
    import sqlalchemy as sa

    from memgauge.results.store import Store, driver_url, resolve_url

    url = driver_url(resolve_url(store))
    if not url.startswith("sqlite"):
        return
    database = sa.engine.make_url(url).database or ""
    path = Path(database)
    if database and (not path.exists() or (path.is_file() and path.stat().st_size == 0)):
        return
    Store.open(store, create=False).close()


def cmd_dashboard(args: argparse.Namespace) -> int:
    from memgauge.results.store import redact

    try:
        import streamlit  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "memgauge: error: the dashboard needs the UI packages: pip install 'memgauge[ui]'\n"
        )
        return 2
    launch = build_launch(store=args.store, port=args.port, host=args.host)
    _check_store(args.store)
    for w in launch.warnings:
        sys.stderr.write(f"memgauge: warning: {w}\n")
    store_url = next(iter(launch.env.values()))
    sys.stderr.write(f"dashboard: {launch.url}  store: {redact(store_url)}  (Ctrl-C to stop)\n")
    env = {**os.environ, **launch.env}
    proc = subprocess.Popen(launch.argv, env=env)
    # a SIGTERM to memgauge stops the server too (it would otherwise outlive us)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="open the results dashboard (Streamlit)",
        description="Serve the results dashboard. It listens on 127.0.0.1 only unless --host "
        "is given; XSRF protection is on, no error details reach the browser and no usage "
        "statistics are sent.",
    )
    # SUPPRESS: the global `memgauge --store URL dashboard` form is not overwritten by a default
    p.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL or SQLite path (default: $MEMGAUGE_STORE, else the default file)",
    )
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1; anything else is reachable "
        "from other machines and prints a warning)",
    )
    p.set_defaults(fn=cmd_dashboard)
