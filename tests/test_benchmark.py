"""dgm_fast.benchmark without running the suite: results folder, row order, recorded state, busy warning."""

import json
import subprocess
from pathlib import Path

import pytest

from dgm_fast import benchmark
from dgm_fast._op import registered_ops


def _bench(op: str, contender: str, median: float, backend: str | None = None) -> dict:
    info = dict(op=op, contender=contender, size=1000, dtype="float32", device="cpu", backend=backend,
                bytes=12_000)
    return {"extra_info": info, "stats": {"median": median}}


def _report() -> dict:
    return {"benchmarks": [
        _bench("sample_langevin", "dgm_fast", 2e-3, "cpu"),
        *(_bench(op.name, c, 1e-5, "cpu" if c == "dgm_fast" else None)
          for op in reversed(registered_ops()) for c in ("eager", "dgm_fast")),
        _bench("copy", "torch", 1e-6),
    ]}


def test_results_go_to_the_user_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert benchmark.default_results_dir() == tmp_path / "dgm_fast" / "bench"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert benchmark.default_results_dir() == Path.home() / ".local" / "share" / "dgm_fast" / "bench"


def test_rows_follow_the_op_registry():
    rows = benchmark.table_rows(_report()["benchmarks"])
    ops = list(dict.fromkeys(r["op"] for r in rows))
    assert ops == ["copy", *(op.name for op in registered_ops()), "sample_langevin"]
    step = next(r for r in rows if r["op"] == registered_ops()[0].name and r["contender"] == "dgm_fast")
    assert step["speedup_vs_eager"] == pytest.approx(1.0) and step["copy_fraction"] == pytest.approx(0.1)


@pytest.mark.parametrize(("before", "after", "busy"), [(0.3, 1.9, False), (2.5, 1.0, True), (0.1, 2.2, True)])
def test_busy_warning_when_load_exceeds_the_cores(before, after, busy):
    warning = benchmark.busy_warning((before, 0.0, 0.0), (after, 0.0, 0.0), cores=2)
    assert (warning is not None) == busy
    if busy:
        assert f"{before:.1f} before" in warning and f"{after:.1f} after" in warning


@pytest.mark.parametrize("exit_code", [0, 1])
def test_run_bench_records_git_and_load_and_keeps_results(monkeypatch, tmp_path, capsys, exit_code):
    loads = iter([(0.2, 0.2, 0.2), (9.0, 3.0, 1.0)])
    monkeypatch.setattr(benchmark, "load_average", lambda: next(loads))
    monkeypatch.setattr(benchmark, "_run_pytest", lambda *args: (exit_code, _report()))
    if exit_code:
        with pytest.raises(RuntimeError, match="saved in"):
            benchmark.run_bench(tmp_path, device="cpu")
        path = next(tmp_path.glob("*.json"))
    else:
        path = benchmark.run_bench(tmp_path, device="cpu")
    result = json.loads(path.read_text())
    assert result["load_average"] == {"before": [0.2, 0.2, 0.2], "after": [9.0, 3.0, 1.0]}
    git = result["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
    assert set(result["versions"]) >= {"python", "torch", "dgm_fast", "pytest_benchmark"}
    assert "warning: the machine was busy" in capsys.readouterr().err
    assert result["busy_warning"].startswith("the machine was busy")


@pytest.mark.parametrize(("args", "whole_suite"), [
    ([], True), (["-k", "vae"], True), (["bench/test_vae_bench.py"], False),
    (["bench/test_vae_bench.py::test_iwae_k1000", "-x"], False),
])
def test_named_bench_files_run_alone(monkeypatch, args, whole_suite):
    commands = []
    monkeypatch.setattr(benchmark.subprocess, "run",
                        lambda cmd, cwd: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    suite = benchmark.bench_dir()
    assert benchmark._run_pytest(suite, "cpu", False, args) == (0, None)
    (cmd,) = commands
    assert (str(suite) in cmd) == whole_suite
    assert cmd[len(cmd) - len(args):] == args
