"""`memgauge dashboard`'s safe defaults (RELIABILITY F17, F18), checked on the command it builds."""

from __future__ import annotations

import sys

import pytest

from memgauge.cli import build_parser
from memgauge.commands.dashboard import APP, build_launch, cmd_dashboard


def _opts(argv: list[str]) -> dict[str, str]:
    """--a.b value pairs of a streamlit command line."""
    i = argv.index("run") + 2
    rest = argv[i:]
    return {rest[k]: rest[k + 1] for k in range(0, len(rest), 2)}


def test_defaults_are_safe():
    launch = build_launch(store="/tmp/x.sqlite", port=8501, host=None)
    assert launch.argv[:5] == [sys.executable, "-m", "streamlit", "run", str(APP)]
    assert APP.name == "main.py" and APP.exists()
    o = _opts(launch.argv)
    assert o["--server.address"] == "127.0.0.1"
    assert o["--server.port"] == "8501"
    assert o["--server.enableXsrfProtection"] == "true"
    assert o["--client.showErrorDetails"] == "none"  # no tracebacks, types or messages
    assert o["--browser.gatherUsageStats"] == "false"
    assert o["--server.headless"] == "true"
    assert launch.warnings == []
    assert launch.env == {"MEMGAUGE_STORE": "sqlite:////tmp/x.sqlite"}
    assert launch.url == "http://127.0.0.1:8501"


def test_other_host_needs_the_flag_and_warns():
    launch = build_launch(store="postgresql://bob:s3cret@db/results", port=9000, host="0.0.0.0")
    assert _opts(launch.argv)["--server.address"] == "0.0.0.0"
    assert len(launch.warnings) == 1 and "0.0.0.0" in launch.warnings[0]
    assert "s3cret" not in launch.warnings[0] and "***" in launch.warnings[0]
    # the URL (with its password) travels in the environment, never on the command line
    assert not any("s3cret" in a for a in launch.argv)
    assert launch.env["MEMGAUGE_STORE"].endswith("@db/results")
    assert build_launch(store=None, port=1, host="127.0.0.1").warnings == []


def test_bad_port():
    with pytest.raises(ValueError, match="port"):
        build_launch(store=None, port=0, host=None)


@pytest.mark.parametrize(
    "argv,store",
    [
        (["--store", "/tmp/a.sqlite", "dashboard"], "/tmp/a.sqlite"),
        (
            ["dashboard", "--store", "/tmp/b.sqlite", "--port", "9", "--host", "::1"],
            "/tmp/b.sqlite",
        ),
        (["dashboard"], None),
    ],
)
def test_cli_parsing(argv, store):
    args = build_parser().parse_args(argv)
    assert args.fn is cmd_dashboard
    assert args.store == store
    assert args.port == (9 if "--port" in argv else 8501)


def test_command_runs_streamlit_with_the_store_in_the_environment(monkeypatch, capsys):
    seen = {}

    class FakePopen:
        def __init__(self, argv, env):
            seen["argv"], seen["env"] = argv, env

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr("memgauge.commands.dashboard.subprocess.Popen", FakePopen)
    args = build_parser().parse_args(
        ["--store", "postgresql://bob:s3cret@db/r", "dashboard", "--host", "10.1.2.3"]
    )
    assert cmd_dashboard(args) == 0
    assert seen["env"]["MEMGAUGE_STORE"] == "postgresql://bob:s3cret@db/r"
    err = capsys.readouterr().err
    assert "warning" in err and "10.1.2.3" in err
    assert "s3cret" not in err
