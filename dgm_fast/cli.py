"""The dgm-fast command: demo, ebm, warp, bench and info.

Every check that needs no work (output folders, device, installed tools)
runs before the work starts and fails as a one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dgm_fast
from dgm_fast import _checks

DESCRIPTION = (
    "Fused CPU/CUDA/Triton kernels for deep generative models. "
    "Run the end-to-end demo or one family's part of it, benchmark the kernels, or show what this "
    "installation can run."
)


def _output_dir(parser: argparse.ArgumentParser, option: str, path: Path) -> Path:
    """``path``, created if missing and proven writable, or a usage error."""
    try:
        return _checks.writable_dir(option, path)
    except ValueError as exc:
        parser.error(str(exc))


def _demo(args: argparse.Namespace) -> None:
    from dgm_fast.demo import run_demo

    out = _output_dir(args.cmd_parser, "--out", args.out)
    run_demo(out, mode=args.mode, seed=args.seed)


def _ebm(args: argparse.Namespace) -> None:
    from dgm_fast.demo.run import run_ebm

    out = _output_dir(args.cmd_parser, "--out", args.out)
    result = run_ebm(out, mode=args.mode, seed=args.seed)
    figures = [*result["toy"]["figures"].values(), result["booster"]["figure"]]
    figures += [result["digits_booster"]["figure"]] if "digits_booster" in result else []
    print(f"\nwrote {', '.join(figures)} and {result['metrics_json']}")


def _warp(args: argparse.Namespace) -> None:
    from dgm_fast.demo.warp_head import run_warp

    out = _output_dir(args.cmd_parser, "--out", args.out)
    result = run_warp(out, mode=args.mode, seed=args.seed, angles_deg=(args.pitch, args.yaw, args.roll),
                      expression_seed=args.expression)
    print(f"wrote {result['figure']}")


def _angle(text: str) -> float:
    from dgm_fast.demo.warp_head import MAX_ANGLE

    value = float(text)
    if not -MAX_ANGLE <= value <= MAX_ANGLE:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [-{MAX_ANGLE:g}, {MAX_ANGLE:g}] degrees, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _bench(args: argparse.Namespace) -> None:
    from dgm_fast import benchmark

    parser = args.cmd_parser
    try:
        benchmark.bench_dir()
    except FileNotFoundError as exc:
        parser.error(str(exc))
    try:
        device = benchmark.resolve_device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device}: {exc}")
    missing = benchmark.missing_requirements()
    if missing:
        parser.error(missing)
    results = _output_dir(parser, "--results", args.results)
    try:
        benchmark.run_bench(results, quick=args.quick, device=device, pytest_args=args.pytest_args)
    except RuntimeError as exc:  # pytest failed; what it measured is saved already
        sys.exit(f"dgm-fast bench: {exc}")


def _info(args: argparse.Namespace) -> None:
    from dgm_fast.collect_env import collect, format_info

    try:
        info = collect()
    except ValueError as exc:  # e.g. an unknown DGM_FAST_BACKEND
        args.cmd_parser.error(str(exc))
    print(json.dumps(info, indent=1) if args.json else "\n".join(format_info(info)))


def _add_demo(sub) -> None:
    from dgm_fast.demo.run import MODES

    demo = sub.add_parser(
        "demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help=f"train toy EBMs with noisy and noise-free Langevin dynamics and the generator loss (dissertation "
             f"§2.4.6) and boost a toy VAE with a latent EBM (§3.3), train GLF vs regularized GLF vs VAE + flow "
             f"prior on digits (§3.2), then warp a head volume by keypoints (§4.3), "
             f"{MODES['default'].duration} on 2 CPU cores",
        description="Run the EBM part (see dgm-fast ebm: ebm_*.png); "
                    "then train GLF (3.3), regularized GLF (3.2) and a VAE with a flow prior "
                    "(3.1) on scikit-learn's digits, score them by Fréchet distance and precision/recall in a "
                    "digit classifier's features and by the flow's test NLL, and plot samples, their nearest "
                    "training digits and interpolations (glf_*.png); then run the warp part (see dgm-fast warp: "
                    "warp_head.png); all scores and timings in metrics.json. Takes "
                    f"{MODES['default'].duration} on 2 CPU cores; --quick and --full change the training budget.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the figure and metrics")
    _add_mode_options(demo, quick=f"a smoke test that still shows the modes ({MODES['quick'].duration})",
                      full=f"the dissertation's settings: appendix 2.4.7's EBMs, §3.3.4's booster networks and the "
                           f"digits booster, GLF's 28 px auto-encoder ({MODES['full'].duration})",
                      seed="seed of torch's generator (weights, data, starts, noise)")
    demo.set_defaults(run=_demo, cmd_parser=demo)


def _add_mode_options(parser: argparse.ArgumentParser, *, quick: str, full: str, seed: str) -> None:
    """--quick / --full (the default mode otherwise) and --seed, with these help texts."""
    # SUPPRESS keeps "(default: ...)" off these two; the parser's default mode fills the gap
    parser.set_defaults(mode="default")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", dest="mode", action="store_const", const="quick", default=argparse.SUPPRESS,
                        help=quick)
    length.add_argument("--full", dest="mode", action="store_const", const="full", default=argparse.SUPPRESS,
                        help=full)
    parser.add_argument("--seed", type=_seed, default=0, help=seed)


def _add_ebm(sub) -> None:
    from dgm_fast.demo.run import MODES, describe_ebm

    ebm = sub.add_parser(
        "ebm", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="the demo's energy-based-model part: toy EBMs with noisy and noise-free dynamics and the generator "
             "loss (dissertation §2.4), their ODE-flow densities, and the latent EBM booster (§3.3)",
        description="Train EBMs on the 9-Gaussian grid and the Swiss roll with short-run noisy (2.15) and "
                    "noise-free (2.20) dynamics by (2.13), and noise-free with the generator loss (2.25); score "
                    "their samples by MMD and their ODE flows (2.16) by test log-likelihood (2.19); plot samples, "
                    "-E and the flows' densities (ebm_toy.png, ebm_flow_density.png). Then boost toy VAEs with a "
                    "latent EBM (3.6)-(3.8) (ebm_booster.png; with --full also GLF on the digits, "
                    "ebm_booster_digits.png). Scores in ebm_metrics.json, written after each part. Takes "
                    f"most of the demo's {MODES['default'].duration} on 2 CPU cores.",
    )
    ebm.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the figures and metrics")
    _add_mode_options(ebm, quick=f"small budgets, a smoke test: {describe_ebm('quick')}",
                      full=f"appendix 2.4.7's EBMs and §3.3.4's booster networks, and the digits booster "
                           f"({MODES['full'].duration} for the whole demo)",
                      seed="seed of torch's generator (weights, data, starts, noise)")
    ebm.set_defaults(run=_ebm, cmd_parser=ebm)


def _add_warp(sub) -> None:
    from dgm_fast.demo.warp_head import MODES

    warp = sub.add_parser(
        "warp", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="the demo's warp part: turn a synthetic head volume by a 3DMM pose change with the fused "
             f"keypoint warp (dissertation §4.3) and time it against the eager chain, {MODES['default'].duration}",
        description="Take the landmarks of a synthetic 3D morphable model (§4.3.4) before and after a pose "
                    "change as keypoints, warp a head volume with "
                    "dgm_fast.keypoint_warp_3d (§4.3.3), save the source, the motion field and the result "
                    "(warp_head.png), and time the fused warp against the eager chain of FOMM / face-vid2vid.",
    )
    warp.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the figure")
    for name, default in (("pitch", 0.0), ("yaw", 30.0), ("roll", 0.0)):
        warp.add_argument(f"--{name}", type=_angle, default=default, help=f"{name} of the driving pose, degrees")
    warp.add_argument("--expression", type=_seed, default=None, metavar="SEED",
                      help="also give the driving face a random 3DMM expression drawn with this seed")
    _add_mode_options(warp, quick=f"smaller volumes, fewer timed calls ({MODES['quick'].duration})",
                      full=f"a larger head volume, more timed calls ({MODES['full'].duration})",
                      seed="seed of the face's identity and of the timed feature volume")
    warp.set_defaults(run=_warp, cmd_parser=warp)


def _add_bench(sub) -> None:
    from dgm_fast.benchmark import default_results_dir

    bench = sub.add_parser(
        "bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="benchmark dgm_fast against eager and compiled PyTorch (needs a source checkout)",
        description="Run bench/ under pytest-benchmark, print speedups and bandwidths, save them as JSON. "
                    "Extra arguments after -- go to pytest.",
    )
    bench.add_argument("--results", type=Path, default=default_results_dir(),
                       help="folder for the JSON; the default is $XDG_DATA_HOME/dgm_fast/bench")
    bench.add_argument("--quick", action="store_true", help="small sizes and short timing: a smoke run")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="device of the benchmarked tensors; auto is cuda when available")
    bench.add_argument("pytest_args", nargs="*", default=[], help="passed to pytest as they are (after --)")
    bench.set_defaults(run=_bench, cmd_parser=bench)


def _add_info(sub) -> None:
    info = sub.add_parser(
        "info", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="versions, CPU, extension build and, per device, which backend can run each op",
        description="Show what this installation can run, and why a backend is missing (for bug reports).",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info, cmd_parser=info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgm-fast", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dgm-fast {dgm_fast.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,ebm,warp,bench,info}")
    _add_demo(sub)
    _add_ebm(sub)
    _add_warp(sub)
    _add_bench(sub)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
