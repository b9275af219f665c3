"""Shared fixtures.  Tests run on CPU in fp32 with tiny models and one thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
os.environ.setdefault("MEMGAUGE_THREADS", "1")  # workers: one thread (noisy shared machines)
# workers import the test plugins from the repository root
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture
def faults_plugin(monkeypatch: pytest.MonkeyPatch):
    """Make the `fault` and `plant` test techniques available here and in workers."""
    import memgauge.techniques.base as base

    monkeypatch.setenv("MEMGAUGE_PLUGINS", "tests.plugins.faults")
    import tests.plugins.faults  # noqa: F401 - registers in this process

    yield
    base._REGISTRY.pop("fault", None)
    base._REGISTRY.pop("plant", None)
    sys.modules.pop("tests.plugins.faults", None)


@pytest.fixture
def store(tmp_path: Path):
    from memgauge.results.store import Store

    st = Store.open(str(tmp_path / "results.sqlite"))
    yield st
    st.close()


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory: pytest.TempPathFactory):
    """A store filled by a real sweep of the smoke suite (isolated workers, ~40 s), shared by
    the session: (store URL, run id).  Read it, never write to it."""
    from memgauge.results.store import Store
    from memgauge.suite import expand_suite, load_suite, order_cells
    from memgauge.sweep import run_sweep

    path = tmp_path_factory.mktemp("smoke") / "smoke.sqlite"
    st = Store.open(str(path))
    _, data = load_suite("smoke")
    outcome = run_sweep(order_cells(expand_suite(data)), store=st, suite="smoke", progress=False)
    st.close()
    return str(path), outcome.run_id
