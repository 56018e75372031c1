"""Runs the benchmark suite in bench/ and records a summary table with the machine it ran on.

The suite itself is plain pytest-benchmark (``pytest bench/``); this module runs
it in a subprocess, turns its JSON into speedups and bandwidths, prints them and
saves everything under ``bench/results/``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

import dgm_fast

OP_ORDER = ("copy", "langevin_step", "langevin_step_", "sample_langevin")
CONTENDER_ORDER = ("dgm_fast", "eager", "compiled", "torch")
HEADER = ("op", "size", "contender", "backend", "median", "vs eager", "vs compiled", "GB/s", "of copy")


def bench_dir() -> Path:
    path = Path(dgm_fast.__file__).resolve().parent.parent / "bench"
    if not (path / "conftest.py").is_file():
        raise FileNotFoundError(
            f"benchmark suite not found at {path}: run_bench needs a source checkout of dgm_fast "
            "(an installed wheel does not ship bench/)"
        )
    return path


def resolve_device(device: str) -> str:
    """"auto" (CUDA if available), "cpu" or "cuda", checked: the device the suite runs on."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False")
    return device


def _run_pytest(suite: Path, device: str, quick: bool, pytest_args: Sequence[str]) -> tuple[int, dict | None]:
    """Exit code of the pytest run and its pytest-benchmark JSON (None if it wrote none)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "benchmark.json"
        cmd = [
            sys.executable, "-m", "pytest", str(suite), "-q", "--benchmark-quiet",
            f"--benchmark-json={report}", f"--bench-device={device}",
            *(["--bench-quick"] if quick else []), *pytest_args,
        ]
        code = subprocess.run(cmd, cwd=suite.parent).returncode
        return code, json.loads(report.read_text()) if report.is_file() else None


def _order(value: str, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)


def table_rows(benchmarks: list[dict]) -> list[dict]:
    """One row per benchmark: its tags, median, dgm_fast's speedups and bandwidths, in display order."""
    rows = [dict(b["extra_info"], median_s=b["stats"]["median"]) for b in benchmarks]
    for r in rows:
        r["gb_per_s"] = r["bytes"] / r["median_s"] / 1e9 if "bytes" in r else None

    def case(r):
        return r["device"], r["dtype"], r["size"]

    medians = {(r["op"], r["contender"], *case(r)): r["median_s"] for r in rows if r["contender"] != "dgm_fast"}
    copy_gbps = {case(r): r["gb_per_s"] for r in rows if r["op"] == "copy"}
    for r in rows:
        for other in ("eager", "compiled"):
            t = medians.get((r["op"], other, *case(r)))
            r[f"speedup_vs_{other}"] = t / r["median_s"] if r["contender"] == "dgm_fast" and t else None
        copy = copy_gbps.get(case(r))
        r["copy_fraction"] = r["gb_per_s"] / copy if r["gb_per_s"] is not None and copy else None
    return sorted(rows, key=lambda r: (
        _order(r["op"], OP_ORDER), r["op"], r["size"], _order(r["contender"], CONTENDER_ORDER), r["backend"] or "",
    ))


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            value = seconds / scale
            return f"{value:.{max(0, 2 - int(math.log10(max(value, 1))))}f} {unit}"  # 3 significant digits


def _fmt_size(n: int) -> str:
    exp = len(str(n)) - 1
    return f"1e{exp}" if n >= 1000 and n == 10**exp else str(n)


def _fmt(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def format_table(rows: list[dict]) -> str:
    cells = [
        (r["op"], _fmt_size(r["size"]), r["contender"], r["backend"] or "-", _fmt_time(r["median_s"]),
         _fmt(r["speedup_vs_eager"], "{:.2f}x"), _fmt(r["speedup_vs_compiled"], "{:.2f}x"),
         _fmt(r["gb_per_s"], "{:.1f}"), _fmt(r["copy_fraction"], "{:.0%}"))
        for r in rows
    ]
    widths = [max(map(len, col)) for col in zip(HEADER, *cells)]
    text_cols = 4  # left-aligned; the numbers are right-aligned

    def line(row):
        return "  ".join(c.ljust(w) if i < text_cols else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *map(line, cells)])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        # other processes on the machine distort CPU timings; this says how busy it was
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_bench(
    results_dir: Path | None = None,
    *,
    quick: bool = False,
    device: str = "auto",
    pytest_args: Sequence[str] = (),
) -> Path:
    """Run bench/ under pytest, print the summary table, save it as JSON and return the JSON's path.

    ``device`` is "auto" (CUDA if available), "cpu" or "cuda"; ``quick`` is the
    smoke-test mode; ``pytest_args`` go to pytest as they are (e.g.
    ``["--bench-backend=triton,cuda", "-k", "langevin_step"]``). Raises
    RuntimeError if pytest failed, after saving whatever it measured.
    """
    suite = bench_dir()
    device = resolve_device(device)
    machine = machine_info(device)
    started = datetime.datetime.now().astimezone()
    code, report = _run_pytest(suite, device, quick, pytest_args)
    if report is None:
        raise RuntimeError(f"pytest exited with code {code} and wrote no benchmark report")

    rows = table_rows(report["benchmarks"])
    print(format_table(rows))
    backends: dict[str, list[str]] = {}
    for r in rows:
        if r["contender"] == "dgm_fast" and r["backend"] not in backends.setdefault(r["device"], []):
            backends[r["device"]].append(r["backend"])
    result = {
        "started": started.isoformat(timespec="seconds"),
        "device": device,
        "quick": quick,
        "pytest_args": list(pytest_args),
        "machine": machine,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "dgm_fast": dgm_fast.__version__,
            "pytest_benchmark": _version("pytest-benchmark"),
        },
        "dgm_fast_backends": backends,
        "rows": rows,
        "pytest_benchmark": report,
    }
    name = machine["gpu"] if device == "cuda" else machine["cpu_model"]
    out_dir = Path(results_dir) if results_dir is not None else suite / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{started:%Y%m%d-%H%M%S}_{device}-{_slug(name)}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nresults: {path}")
    if code != 0:
        raise RuntimeError(f"pytest exited with code {code}; the benchmarks that ran are saved in {path}")
    return path
