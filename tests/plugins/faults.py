"""Test-only techniques, loaded into workers through MEMGAUGE_PLUGINS=tests.plugins.faults:
`fault` makes a cell crash, hang (with a hanging child), run out of memory, raise or corrupt
torch (a monkey-patch that leaks 1 MiB per embedding call); `plant` allocates a known number of
bytes inside the measured step (RELIABILITY F1-F3, F14)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register

KINDS = ("abort", "segv", "hang", "oom", "raise", "exit", "corrupt")

LEAK: list = []  # what `corrupt` keeps alive in the process


@register
@dataclass(kw_only=True)
class Fault(Technique):
    kind: str = "abort"
    name: ClassVar[str] = "fault"
    family: ClassVar[str] = "test"
    summary: ClassVar[str] = "test fixture: crash, hang, OOM or raise inside the worker"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")

    def apply(self, wl: Any) -> None:
        if self.kind == "abort":
            os.abort()
        if self.kind == "segv":
            import ctypes

            ctypes.string_at(0)
        if self.kind == "exit":
            os._exit(7)
        if self.kind == "hang":
            # a child that hangs too: the whole process group must be killed
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            pidfile = os.environ.get("MEMGAUGE_TEST_PIDFILE")
            if pidfile:
                with open(pidfile, "w") as f:
                    f.write(f"{os.getpid()} {child.pid}")
            time.sleep(3600)
        if self.kind == "oom":
            import torch

            hog = []
            while True:
                hog.append(torch.ones(256 * 1024 * 1024 // 4))
        if self.kind == "raise":
            raise RuntimeError("planted failure")
        if self.kind == "corrupt":  # global state: torch monkey-patched for the rest of the process
            import torch
            import torch.nn.functional as F

            original = F.embedding

            def leaky(*a: Any, **k: Any) -> Any:
                LEAK.append(torch.ones(1 << 18))  # 1 MiB kept per call
                return original(*a, **k)

            F.embedding = leaky
            torch.nn.functional.embedding = leaky


@register
@dataclass(kw_only=True)
class Plant(Technique):
    """Allocate `bytes` (fp32 ones, touched) at the start of each step, alive until it ends."""

    bytes: int = 0
    name: ClassVar[str] = "plant"
    family: ClassVar[str] = "test"
    summary: ClassVar[str] = "test fixture: a known allocation inside the measured step"

    def apply(self, wl: Any) -> None:
        import torch

        n = self.bytes // 4

        def wrap(step: Any) -> Any:
            def planted(i: int) -> Any:
                x = torch.ones(n, device=wl.device)
                out = step(i)
                del x
                return out

            return planted

        wl.step_wrappers.append(wrap)
