"""Provenance of a result (RELIABILITY F16): versions, device, CPU, RAM, OS, git, hashes.

Reading any of it may fail; a failure is recorded as an error field, never raised."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "torchao",
    "optimum-quanto",
    "triton",
    "liger-kernel",
    "nvidia-ml-py",
    "numpy",
    "sqlalchemy",
)

# The fields that make two environments comparable (nightly baselines match on their hash).
ENV_HASH_FIELDS = ("device_name", "device_total_memory", "cuda", "driver", "cpu_model", "packages")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def collect_env(*, torch_loaded: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Everything F16 asks for.  torch is only consulted when the caller already imported it."""
    errors: list[str] = []
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "packages": package_versions(),
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "device": device,
        "device_name": "cpu",
        "device_total_memory": None,
        "cuda": None,
        "driver": None,
        "memgauge": None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    env["git_dirty"] = bool(status) if status is not None else None
    try:
        from memgauge import __version__
        from memgauge.codeversion import workload_version

        env["memgauge"] = __version__
        env["workload_version"] = workload_version()
    except Exception as exc:  # noqa: BLE001 - provenance records what failed, never fails
        errors.append(f"memgauge version: {exc}")
    if torch_loaded and "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        env["threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            try:
                idx = torch.device(device).index or 0
                props = torch.cuda.get_device_properties(idx)
                env["device_name"] = props.name
                env["device_total_memory"] = props.total_memory
                env["device_capability"] = f"{props.major}.{props.minor}"
            except Exception as exc:  # noqa: BLE001 - provenance records what failed, never fails
                errors.append(f"cuda device: {exc}")
            try:
                import pynvml

                pynvml.nvmlInit()
                env["driver"] = pynvml.nvmlSystemGetDriverVersion()
            except Exception as exc:  # noqa: BLE001 - provenance records what failed, never fails
                errors.append(f"nvml: {type(exc).__name__}")
        else:
            env["device_total_memory"] = env["ram_bytes"]
    env["errors"] = errors
    return env


def env_hash(env: dict[str, Any]) -> str:
    """A short hash of what makes results comparable (device, driver, library versions)."""
    payload = {k: env.get(k) for k in ENV_HASH_FIELDS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :12
    ]


def env_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two environments (for comparison warnings)."""
    out = []
    for k in ENV_HASH_FIELDS:
        va, vb = a.get(k), b.get(k)
        if k == "packages" and isinstance(va, dict) and isinstance(vb, dict):
            for p in sorted(set(va) | set(vb)):
                if va.get(p) != vb.get(p):
                    out.append(f"{p}: {va.get(p)} vs {vb.get(p)}")
        elif va != vb:
            out.append(f"{k}: {va} vs {vb}")
    return out
