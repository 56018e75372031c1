"""Runs the benchmark suite in bench/ and records a summary table with the machine it ran on.

The suite itself is plain pytest-benchmark (``pytest bench/``); this module runs
it in a subprocess, turns its JSON into speedups and bandwidths, prints them and
saves everything, with versions, git commit and load averages, to a results
folder (default: ``$XDG_DATA_HOME/dgm_fast/bench``, i.e. ``~/.local/share/dgm_fast/bench``).
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import importlib.util
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
from dgm_fast._op import registered_ops
from dgm_fast.collect_env import cpu_model, git_state, version, versions

# Rows that are not registered ops: the copy yardstick leads the table; whole
# chains (sample_langevin) and anything else follow the registry's ops.
LEADING_ROWS = ("copy",)
CONTENDER_ORDER = ("dgm_fast", "eager", "compiled", "freia", "normflows", "nflows", "zuko", "torch")
HEADER = ("op", "size", "contender", "backend", "median", "vs eager", "vs compiled", "vs best", "GB/s", "of copy",
          "GFLOP/s", "of GEMM", "peak MB")
REQUIRES = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}  # module: distribution
# the flow libraries of bench/peers/ (also in the bench extra): optional, their rows skip without them
PEERS = {"FrEIA": "FrEIA", "normflows": "normflows", "nflows": "nflows", "zuko": "zuko"}


def default_results_dir() -> Path:
    """``$XDG_DATA_HOME/dgm_fast/bench`` (``~/.local/share/dgm_fast/bench``): outside the source checkout."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "dgm_fast" / "bench"


def bench_dir() -> Path:
    path = Path(dgm_fast.__file__).resolve().parent.parent / "bench"
    if not (path / "conftest.py").is_file():
        raise FileNotFoundError(
            f"benchmark suite not found at {path}: benchmarks need a source checkout of dgm_fast "
            "(an installed wheel does not ship bench/)"
        )
    return path


def missing_requirements() -> str | None:
    """What the suite needs and is not installed, with the command that installs it; None if nothing."""
    missing = [dist for module, dist in REQUIRES.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    checkout = bench_dir().parent
    return (f"dgm-fast bench needs {' and '.join(missing)}; install the bench extra: "
            f'pip install --no-build-isolation -e "{checkout}[bench]"')


def missing_peers() -> list[str]:
    """The peer libraries that are not installed (their benchmarks skip)."""
    return [dist for module, dist in PEERS.items() if importlib.util.find_spec(module) is None]


def resolve_device(device: str) -> str:
    """"auto" (CUDA if available), "cpu" or "cuda", checked: the device the suite runs on."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available here (torch.cuda.is_available() is False)")
    return device


def _run_pytest(suite: Path, device: str, quick: bool, pytest_args: Sequence[str]) -> tuple[int, dict | None]:
    """Exit code of the pytest run and its pytest-benchmark JSON (None if it wrote none). The whole
    suite runs unless ``pytest_args`` name files or tests of it (``bench/test_vae_bench.py``)."""
    named = any(not a.startswith("-") and (suite.parent / a.split("::")[0]).exists() for a in pytest_args)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "benchmark.json"
        cmd = [
            sys.executable, "-m", "pytest", *([] if named else [str(suite)]), "-q", "--benchmark-quiet",
            f"--benchmark-json={report}", f"--bench-device={device}",
            *(["--bench-quick"] if quick else []), *pytest_args,
        ]
        code = subprocess.run(cmd, cwd=suite.parent).returncode
        return code, json.loads(report.read_text()) if report.is_file() else None


def _order(value: str, order: Sequence[str]) -> int:
    return order.index(value) if value in order else len(order)


def op_order() -> tuple[str, ...]:
    return LEADING_ROWS + tuple(op.name for op in registered_ops())


def table_rows(benchmarks: list[dict]) -> list[dict]:
    """One row per benchmark: its tags, median, dgm_fast's speedups and bandwidths, in display order."""
    rows = [dict(b["extra_info"], median_s=b["stats"]["median"]) for b in benchmarks]
    for r in rows:
        r["gb_per_s"] = r["bytes"] / r["median_s"] / 1e9 if "bytes" in r else None
        r["gflop_per_s"] = r["flops"] / r["median_s"] / 1e9 if "flops" in r else None

    def case(r):
        return r["device"], r["dtype"], r["size"]

    medians = {(r["op"], r["contender"], *case(r)): r["median_s"] for r in rows if r["contender"] != "dgm_fast"}
    copy_gbps = {case(r): r["gb_per_s"] for r in rows if r["op"] == "copy"}
    # GEMM yardsticks (bench/test_coupling_bench.py): rows name theirs in "gemm_yardstick"
    gemm_gflops = {(r["op"], *case(r)): r["gflop_per_s"]
                   for r in rows if r["contender"] == "torch" and r["gflop_per_s"]}
    for r in rows:
        for other in ("eager", "compiled"):
            t = medians.get((r["op"], other, *case(r)))
            r[f"speedup_vs_{other}"] = t / r["median_s"] if r["contender"] == "dgm_fast" and t else None
        # the fastest other contender of the same op and case: eager, compiled or a peer library
        others = [(t, c) for (op, c, *k), t in medians.items() if op == r["op"] and tuple(k) == case(r)]
        best = min(others) if r["contender"] == "dgm_fast" and others else None
        r["best_other"] = best[1] if best else None
        r["speedup_vs_best"] = best[0] / r["median_s"] if best else None
        copy = copy_gbps.get(case(r))
        r["copy_fraction"] = r["gb_per_s"] / copy if r["gb_per_s"] is not None and copy else None
        gemm = gemm_gflops.get((r.get("gemm_yardstick"), *case(r)))
        r["gemm_fraction"] = r["gflop_per_s"] / gemm if r["gflop_per_s"] is not None and gemm else None
    ops = op_order()
    return sorted(rows, key=lambda r: (
        _order(r["op"], ops), r["op"], r["size"], _order(r["contender"], CONTENDER_ORDER), r["backend"] or "",
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
         "-" if r["speedup_vs_best"] is None else f"{r['speedup_vs_best']:.2f}x {r['best_other']}",
         _fmt(r["gb_per_s"], "{:.1f}"), _fmt(r["copy_fraction"], "{:.0%}"),
         _fmt(r["gflop_per_s"], "{:.1f}"), _fmt(r["gemm_fraction"], "{:.0%}"),
         _fmt(r.get("peak_extra_bytes") and r["peak_extra_bytes"] / 1e6, "{:.0f}"))
        for r in rows
    ]
    widths = [max(map(len, col)) for col in zip(HEADER, *cells)]
    text_cols = 4  # left-aligned; the numbers are right-aligned

    def line(row):
        return "  ".join(c.ljust(w) if i < text_cols else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *map(line, cells)])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_extra_bytes(fn, device: torch.device) -> int | None:
    """The memory ``fn()`` holds at its peak beyond what was held before it: the CUDA allocator's
    peak statistic, or on Linux the process's peak resident memory (VmHWM, reset through
    /proc/self/clear_refs) over its resident memory just before, once freed heap pages are returned
    to the system (malloc_trim), so every page fn touches counts. None where neither exists."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(device: str) -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
    }


def busy_warning(before: Sequence[float] | None, after: Sequence[float] | None, cores: int) -> str | None:
    """A warning if the 1-minute load average exceeded the core count before or after the run.

    Other processes distort CPU timings badly (OpenMP threads wait for each
    other), so the ratios of such a run are unreliable. The suite itself keeps
    about ``torch_threads`` cores busy, which "after" includes.
    """
    if before is None or after is None or max(before[0], after[0]) <= cores:
        return None  # idle, or no load average on this platform
    return (f"the machine was busy: 1-minute load average {before[0]:.1f} before and {after[0]:.1f} after the run, "
            f"on {cores} cores; timings and ratios are unreliable, rerun on an idle machine")


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
    ``["--bench-backend=triton,cuda", "-k", "langevin_step"]``). The JSON goes
    to ``results_dir`` (default ``default_results_dir()``). Everything that can
    fail without measuring is checked first. Raises RuntimeError if pytest
    failed, after saving whatever it measured.
    """
    suite = bench_dir()
    missing = missing_requirements()
    if missing:
        raise ModuleNotFoundError(missing)
    peers = missing_peers()
    if peers:
        print(f"note: {', '.join(peers)} not installed, their benchmarks are skipped; install the bench extra: "
              f'pip install --no-build-isolation -e "{suite.parent}[bench]"', file=sys.stderr)
    device = resolve_device(device)
    out_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(device)
    started = datetime.datetime.now().astimezone()
    git = git_state()  # of the code that runs, before anyone edits it
    load_before = load_average()
    code, report = _run_pytest(suite, device, quick, pytest_args)
    load_after = load_average()
    busy = busy_warning(load_before, load_after, machine["cpu_count"])
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
        # 1-, 5- and 15-minute load averages: above cpu_count, other work competed with the timings
        "load_average": {"before": load_before, "after": load_after},
        "busy_warning": busy,
        "git": git,
        "versions": {**versions(), "pytest_benchmark": version("pytest-benchmark"),
                     **{dist: version(dist) for dist in PEERS.values()}},
        "dgm_fast_backends": backends,
        "rows": rows,
        "pytest_benchmark": report,
    }
    name = machine["gpu"] if device == "cuda" else machine["cpu_model"]
    path = out_dir / f"{started:%Y%m%d-%H%M%S}_{device}-{_slug(name)}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nresults: {path}")
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    if code != 0:
        raise RuntimeError(f"pytest exited with code {code}; the benchmarks that ran are saved in {path}")
    return path
