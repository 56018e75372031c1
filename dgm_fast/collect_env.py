"""What ``dgm-fast info`` prints (like ``python -m torch.utils.collect_env``) and benchmark results record.

Versions, the CPU and its vector ISA, the git state of a source checkout, the
compiled extension, and for every device present which backend can run each
registered op, and why the others cannot.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

import dgm_fast
from dgm_fast import _extension, backend
from dgm_fast._op import registered_ops

ISA_FLAGS = {"AVX2": "avx2", "AVX-512": "avx512f"}  # what the C++ CPU kernels are compiled for (/proc/cpuinfo)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": version("triton"),
        "numpy": version("numpy"),
        "dgm_fast": dgm_fast.__version__,
    }


def _cpuinfo(key: str) -> str | None:
    """The first ``key : value`` of /proc/cpuinfo (Linux only)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":", 1)[0].strip() == key), None)


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_info() -> dict:
    flags = _cpuinfo("flags")
    return {
        "model": cpu_model(),
        "cores": os.cpu_count(),
        # None where /proc/cpuinfo is missing (not Linux)
        "isa": {name: flag in flags.split() for name, flag in ISA_FLAGS.items()} if flags else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def git_state() -> dict | None:
    """``{"commit", "dirty"}`` of the checkout dgm_fast is imported from; None if it is not one."""
    root = Path(dgm_fast.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    try:
        # an installed copy inside some other repository (a venv in a checkout) is not a checkout
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != root:
            return None
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return None


def extension_info() -> dict:
    """Whether ``dgm_fast._C`` loaded (and why not) and what it was built with."""
    info: dict = {"loaded": _extension._C is not None, "load_error": _extension.LOAD_ERROR}
    try:
        info["build"] = _extension.build_info()
    except Exception as exc:  # an extension built before build_info existed: say so, do not fail
        info["build"] = {"error": f"{type(exc).__name__}: {exc}"}
    return info


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _auto_backend(device: torch.device, op: str) -> str:
    try:
        return backend.resolve(device, op)
    except RuntimeError as exc:  # a forced backend (DGM_FAST_BACKEND) that cannot run
        return f"none ({exc})"


def op_backends(device: torch.device) -> list[dict]:
    """Per registered op: the backend a call would use now, and each backend's reason it cannot run (None: it can)."""
    return [
        {"op": op.name, "family": op.family, "uses": _auto_backend(device, op.name),
         "unavailable": op.availability(device)}
        for op in registered_ops()
    ]


def collect() -> dict:
    return {
        "versions": versions(),
        "cpu": cpu_info(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git": git_state(),
        "extension": extension_info(),
        "forced_backend": backend.forced_backend(),
        "ops": {str(d): op_backends(d) for d in devices()},
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_info(info: dict) -> list[str]:
    """``collect()`` as the lines ``dgm-fast info`` prints."""
    v, cpu, ext, git = info["versions"], info["cpu"], info["extension"], info["git"]
    isa = ", ".join(f"{k} {_yes(on)}" for k, on in cpu["isa"].items()) if cpu["isa"] else "ISA unknown"
    rows = {
        **{name: value for name, value in v.items() if name != "torch_cuda"},
        "torch": f"{v['torch']} (CUDA {v['torch_cuda'] or 'none'})",
        "checkout": f"git {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git else "none",
        "cpu": f"{cpu['model']}, {cpu['cores']} cores; {isa}; torch CPU kernels: {cpu['torch_cpu_capability']}",
        "cuda": ", ".join(info["cuda_devices"]) or "no CUDA device",
        "extension": "loaded, built with:" if ext["loaded"] else f"not loaded: {ext['load_error']}",
    }
    lines = [f"{name:<10} {value}" for name, value in rows.items()]
    lines += [f"  {k}: {val}" for k, val in ext["build"].items() if k not in ("loaded", "load_error")]
    forced = info["forced_backend"]
    lines.append(f"{'backend':<10} " + ("auto (per op and device)" if forced == "auto" else f"{forced} (forced)"))
    for device, ops in info["ops"].items():
        lines.append(f"ops on {device}:")
        for op in ops:
            lines.append(f"  {op['op']} ({op['family']}): uses {op['uses']}")
            lines += [f"    {b:<10} {'available' if why is None else 'unavailable: ' + why}"
                      for b, why in op["unavailable"].items()]
    return lines
