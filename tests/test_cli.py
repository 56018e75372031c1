"""The dgm-fast command: one-line usage errors before any work, --help, --version, info, demo and ebm output."""

import importlib.util
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dgm_fast
import dgm_fast.demo
from dgm_fast import benchmark
from dgm_fast._op import registered_ops
from dgm_fast.backend import BACKENDS
from dgm_fast.cli import main
from dgm_fast.demo import glf_digits, warp_head
from dgm_fast.demo import run as demo_run
from dgm_fast.models import TrainConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def _no_work(*args, **kwargs):
    raise AssertionError("the command started its work before checking its arguments")


TINY_WARP = replace(warp_head.MODES["quick"], figure_size=(6, 12, 12), timing_channels=2, timing_size=(4, 6, 6),
                    repeats=1)
TINY_DEMO = demo_run.DemoConfig(TrainConfig(n_iters=2, batch_size=16), hidden=8, depth=1, n_eval=50, resolution=8,
                                n_loglik=20, density_resolution=6,
                                booster=demo_run.BoosterConfig(8, 2, 4, TrainConfig(n_iters=2, batch_size=16)),
                                duration="a moment")
EBM_FILES = ("ebm_toy.png", "ebm_flow_density.png", "ebm_booster.png", "ebm_metrics.json")


@pytest.fixture
def no_work(monkeypatch):
    """Fail if the demo, its EBM part, the warp demo or the benchmark suite starts."""
    monkeypatch.setattr(dgm_fast.demo, "run_demo", _no_work)
    monkeypatch.setattr(demo_run, "run_ebm", _no_work)
    monkeypatch.setattr(warp_head, "run_warp", _no_work)
    monkeypatch.setattr(benchmark, "run_bench", _no_work)


def _usage_error(capsys, argv: list[str]) -> str:
    """The error line of ``dgm-fast argv``, which must exit 2 at once with no traceback."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert time.perf_counter() - start < 2.0
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_demo_out_under_a_file_is_a_usage_error(capsys, no_work, a_file):
    # a folder that cannot be created (a file is in the way): unwritable even for root
    line = _usage_error(capsys, ["demo", "--out", str(a_file / "out")])
    assert "--out" in line and "cannot write" in line


def test_demo_out_that_is_a_file_is_a_usage_error(capsys, no_work, a_file):
    assert "not a folder" in _usage_error(capsys, ["demo", "--out", str(a_file)])


def test_ebm_out_that_is_a_file_is_a_usage_error(capsys, no_work, a_file):
    assert "--out" in _usage_error(capsys, ["ebm", "--out", str(a_file)])


@pytest.mark.parametrize("argv,wanted", [(["--seed", "-1"], "--seed: must be a non-negative integer"),
                                         (["--quick", "--full"], "not allowed with argument"),
                                         (["--steps", "3"], "unrecognized arguments")])
def test_ebm_bad_options_are_usage_errors(capsys, no_work, argv, wanted):
    assert wanted in _usage_error(capsys, ["ebm", *argv])


def test_ebm_writes_its_figures_and_metrics_and_prints_where(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(demo_run.MODES, "quick", TINY_DEMO)
    main(["ebm", "--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for name in EBM_FILES:
        assert (tmp_path / name).stat().st_size > 0
        assert str(tmp_path.resolve() / name) in printed
    saved = json.loads((tmp_path / "ebm_metrics.json").read_text())
    assert set(saved["toy"]["scores"]) == {"9-gaussians", "swiss-roll"} and "booster" in saved
    assert "MMD²" in printed and "log-likelihood" in printed and "best:" in printed


def test_warp_out_that_is_a_file_is_a_usage_error(capsys, no_work, a_file):
    assert "--out" in _usage_error(capsys, ["warp", "--out", str(a_file)])


@pytest.mark.parametrize("argv,wanted", [(["--yaw", "61"], "--yaw: must be in [-60, 60] degrees"),
                                         (["--pitch", "nan"], "--pitch: must be in"),
                                         (["--roll", "left"], "--roll: invalid"),
                                         (["--expression", "-3"], "--expression: must be a non-negative integer"),
                                         (["--seed", "-1"], "--seed: must be a non-negative integer"),
                                         (["--quick", "--full"], "not allowed with argument")])
def test_warp_bad_options_are_usage_errors(capsys, no_work, argv, wanted):
    assert wanted in _usage_error(capsys, ["warp", *argv])


def test_warp_writes_its_figure_and_prints_where(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(warp_head.MODES, "quick", TINY_WARP)
    main(["warp", "--quick", "--out", str(tmp_path), "--yaw", "-20", "--expression", "1"])
    printed = capsys.readouterr().out
    assert (tmp_path / "warp_head.png").stat().st_size > 10_000
    assert f"wrote {tmp_path.resolve() / 'warp_head.png'}" in printed
    assert "dgm_fast" in printed and "eager chain" in printed and "speed-up" in printed


def test_bench_results_that_is_a_file_is_a_usage_error(capsys, no_work, a_file):
    line = _usage_error(capsys, ["bench", "--quick", "--results", str(a_file)])
    assert "--results" in line and "not a folder" in line


def test_bench_on_cuda_without_cuda_is_a_usage_error(capsys, no_work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _usage_error(capsys, ["bench", "--device", "cuda"])
    assert "--device cuda" in line and "CUDA is not available" in line


def test_bench_without_pytest_benchmark_says_what_to_install(capsys, no_work, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest_benchmark" else
                        find_spec(name, *a))
    line = _usage_error(capsys, ["bench"])
    assert "pytest-benchmark" in line and re.search(r'pip install .*\[bench\]', line)


def test_console_script_errors_without_a_traceback(a_file):
    """The installed entry point, end to end: exit 2, one error line, no traceback, before any work."""
    proc = subprocess.run([sys.executable, "-m", "dgm_fast.cli", "demo", "--out", str(a_file / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dgm-fast demo: error: --out")
    assert proc.stdout == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dgm-fast {dgm_fast.__version__}"


@pytest.mark.parametrize("command", [[], ["demo"], ["ebm"], ["warp"], ["bench"], ["info"]])
def test_help_is_plain_text(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "`" not in capsys.readouterr().out


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo = capsys.readouterr().out
    assert "(default: demo_out)" in demo and "(default: 0)" in demo
    assert demo_run.MODES["quick"].duration in demo and demo_run.MODES["full"].duration in demo
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    bench = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    assert "(default: auto)" in bench and f"(default: {benchmark.default_results_dir()})" in bench


def test_info_lists_every_op_and_backend(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert f"dgm_fast   {dgm_fast.__version__}" in out and "ops on cpu:" in out
    for op in registered_ops():
        assert re.search(rf"^  {re.escape(op.name)} \({op.family}\): uses \w+", out, re.M), op.name
    for backend in BACKENDS:
        assert re.search(rf"^    {backend} +(available|unavailable: .+)$", out, re.M), backend


def test_info_json_says_why_a_backend_is_missing(capsys):
    main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert set(info["versions"]) >= {"python", "torch", "triton", "numpy", "dgm_fast"}
    assert info["extension"]["loaded"] == (info["extension"]["load_error"] is None)
    cpu_ops = info["ops"]["cpu"]
    assert [op["op"] for op in cpu_ops] == [op.name for op in registered_ops()]
    for op in cpu_ops:
        assert op["unavailable"]["reference"] is None
        assert all(why is None or why for why in op["unavailable"].values())  # every gap has a reason
        assert op["unavailable"]["cuda"]  # CUDA kernels never run on CPU tensors


def test_demo_writes_its_files_and_prints_where(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(demo_run.MODES, "quick", TINY_DEMO)
    monkeypatch.setitem(glf_digits.MODES, "quick", replace(glf_digits.MODES["quick"], epochs=1, classifier_epochs=1))
    monkeypatch.setitem(warp_head.MODES, "quick", TINY_WARP)
    out = tmp_path / "new" / "folder"
    main(["demo", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    for name in (*EBM_FILES[:-1], "glf_samples.png", "warp_head.png", "metrics.json"):
        assert (out / name).stat().st_size > 0
        assert str(out.resolve() / name) in printed


def test_readme_states_the_demo_duration():
    """README's "Run it" says how long the default demo takes, as measured (MODES["default"].duration)."""
    run_it = README.read_text().split("## Run it", 1)[1].split("\n## ", 1)[0]
    run_it = " ".join(run_it.split())  # undo line wrapping
    assert "dgm-fast demo" in run_it and demo_run.MODES["default"].duration in run_it
