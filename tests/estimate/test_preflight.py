"""Pre-flight in sweeps: cells predicted not to fit are stored `skipped_predicted_oom`."""

from __future__ import annotations

from memgauge.cell import Cell
from memgauge.sweep import run_sweep
from memgauge.units import MiB


def _cells() -> list[Cell]:
    return [Cell(model="llama-tiny", mode="train", batch=b, seq_len=64) for b in (1, 16)]


def _ok_runner(cell: dict) -> dict:
    from memgauge.cell import Cell
    from memgauge.result import empty_result

    r = empty_result(Cell.from_dict(cell))
    r["status"] = "ok"
    return r


def test_preflight_skips_what_cannot_fit(store) -> None:
    ran: list[int] = []

    def runner(cell: dict) -> dict:
        ran.append(cell["batch"])
        return _ok_runner(cell)

    out = run_sweep(
        _cells(), store=store, suite="t", runner=runner, progress=False, device_memory=8 * MiB
    )
    status = {r["cell"]["batch"]: r for r in out.results}
    assert ran == [1]
    skipped = status[16]
    assert skipped["status"] == "skipped_predicted_oom"
    assert skipped["prediction"]["analytic_peak"] > 8 * MiB
    assert "exceeds the device memory" in skipped["error"]
    rows = {r["batch"]: r for r in store.results(out.run_id)}
    assert rows[16]["status"] == "skipped_predicted_oom" and rows[16]["analytic_peak"]


def test_no_skip_and_cpu_without_device_memory_run_everything(store) -> None:
    ran: list[int] = []

    def runner(cell: dict) -> dict:
        ran.append(cell["batch"])
        return _ok_runner(cell)

    run_sweep(
        _cells(),
        store=store,
        suite="t",
        runner=runner,
        progress=False,
        device_memory=8 * MiB,
        skip_predicted_oom=False,
    )
    run_sweep(_cells(), store=store, suite="t", runner=runner, progress=False)
    assert ran == [1, 16, 1, 16]


def test_sweep_cli_has_the_flags(tmp_path) -> None:
    from memgauge.cli import build_parser

    args = build_parser().parse_args(
        ["sweep", "--suite", "smoke", "--device-memory", "24GiB", "--no-skip"]
    )
    assert args.device_memory == "24GiB" and args.no_skip
