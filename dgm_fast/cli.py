"""The dgm-fast command: demo, ebm, warp, ood, bench and info.

Every check that needs no work (output folders, device, installed tools)
runs before the work starts and fails as a one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

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


def _ood(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from dgm_fast.demo import ood_data, ood_run

    parser = args.cmd_parser
    out = _output_dir(parser, "--out", args.out)
    overrides = {field: getattr(args, field) for field in OOD_OVERRIDES if hasattr(args, field)}
    config = replace(ood_run.MODES[args.mode], **overrides)
    train, _, test = ood_run.in_distribution(args.seed)
    for option, value, limit in (("--n-train", config.n_train, len(train)), ("--n-in", config.n_in, len(test))):
        if value is not None and value > limit:
            parser.error(f"{option} must be <= {limit} (the digits' split), got {value}")
    unknown = [name for name in args.ood if name not in ood_data.OOD_SETS]
    if unknown:
        parser.error(f"--ood: unknown set {unknown[0]!r}; choose from {','.join(ood_data.OOD_SETS)}")
    extra = {}
    for path in getattr(args, "ood_path", []):
        name = path.stem or path.resolve().name
        if name in extra or name in (*args.ood, ood_run.IN_SET):
            parser.error(f"--ood-path {path}: a set named {name!r} is scored already")
        try:
            extra[name] = ood_data.load_images(path)
        except ValueError as exc:
            parser.error(f"--ood-path {exc}")
    if not args.ood and not extra:
        parser.error("--ood: no OOD set to score (give set names or --ood-path)")
    if args.save is not None:
        if args.save.is_dir():
            parser.error(f"--save {args.save}: is a folder, expected a file name")
        _output_dir(parser, "--save", args.save.parent)
    model = None
    if args.load is not None:
        try:
            model = ood_run.load_model(args.load, config)
        except ValueError as exc:
            parser.error(f"--load {exc}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    result = ood_run.run_ood(out, config, ood_sets=args.ood, extra_sets=extra, methods=args.methods, model=model,
                             save=args.save, seed=args.seed, device=device)
    if result is not None:  # rank 0 of a torchrun job, or the only process
        print(f"\n{result['markdown']}\nwrote {', '.join(result['files'])} in {result['seconds']:.0f} s")


def _names(choices: tuple[str, ...] | None = None):
    """An argparse type: a comma-separated list of names (each one of ``choices`` if given)."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if choices is not None and n not in choices]
        if bad or (choices is not None and not names):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {','.join(choices)}, got {text!r}")
        return names
    return parse


def _count(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value
    return parse


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


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


# dgm-fast ood's options that override its mode's OODConfig field of the same name
OOD_OVERRIDES = {
    "nf": (_count(1), "DCGAN VAE width (Table 4.6: 32)"),
    "nz": (_count(1), "latent size (Table 4.6: 100)"),
    "epochs": (_count(0), "training epochs (appendix 4.2.6: 100)"),
    "batch_size": (_count(1), "training batch size (appendix 4.2.6: 64)"),
    "lr": (_rate, "training learning rate of Adam (appendix 4.2.6: 5e-4)"),
    "n_train": (_count(2), "training digits (at most 1294; the rest of the train split is LMD's validation)"),
    "n_in": (_count(1), "in-distribution test digits scored (at most 359)"),
    "n_ood": (_count(1), "images of each OOD set scored"),
    "n_samples": (_count(1), "K, importance samples of the likelihood (2.2) (§4.2.3: 1000)"),
    "z_steps": (_count(0), "LR_Z's Adam steps on the posterior (appendix 4.2.6: 300)"),
    "z_lr": (_rate, "LR_Z's learning rate (appendix 4.2.6: 1e-4)"),
    "e_steps": (_count(0), "LR_E's Adam steps on a copy of the encoder (official code: 100)"),
    "e_lr": (_rate, "LR_E's learning rate (official code: 2e-4)"),
    "beta": (_rate, "weight of the KL term, a beta-VAE (Table 4.3)"),
    "score_batch": (_count(1), "images scored at once (optimised together, each independently)"),
}


def _add_ood(sub) -> None:
    from dgm_fast.demo.ood_data import OOD_SETS
    from dgm_fast.demo.ood_run import FILES, MODES
    from dgm_fast.models.ood import METHODS

    ood = sub.add_parser(
        "ood", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="out-of-distribution detection by Likelihood Regret (dissertation §4.2): train a DCGAN VAE on "
             f"scikit-learn's digits and score OOD sets, {MODES['default'].duration} on 2 CPU cores",
        description="Train the DCGAN VAE of Table 4.6 (1 channel, 256-way categorical decoder) on scikit-learn's "
                    "digits at 32 x 32 (or --load one), score the held-out test digits and each OOD set by "
                    "Likelihood Regret (4.4), LR_Z and LR_E, and by the likelihood, input complexity IC(png) and "
                    "latent Mahalanobis distance, and write the per-image scores, AUROC/AUPRC/FPR80 per method and "
                    f"OOD set, the score histograms and ROC curves ({', '.join(FILES)}). Under torchrun every "
                    "process scores a shard and the first writes the files; without --load the first trains and "
                    "sends the weights to the others, which wait (30 minutes at most): train long runs once "
                    "with --save. The modes set every size below; each option overrides its mode's value.",
    )
    ood.add_argument("--out", type=Path, default=Path("ood_out"), help="folder for the scores, tables and figures")
    ood.add_argument("--ood", type=_names(), default=",".join(OOD_SETS), metavar="SETS",
                     help=f"comma-separated synthetic or bundled OOD sets, of {','.join(OOD_SETS)} (Noise and "
                          "Constant of appendix 4.2.6; photos: 32 x 32 grey patches of scikit-learn's sample "
                          "photographs)")
    ood.add_argument("--ood-path", type=Path, action="append", default=argparse.SUPPRESS, metavar="PATH",
                     help="also score a folder of PNG/JPEG images or a .npz array (N x H x W or N x H x W x C, "
                          "uint8 or float in [0, 1]), resized to 32 x 32 and made grey; repeatable")
    ood.add_argument("--methods", type=_names(METHODS), default=",".join(METHODS), metavar="METHODS",
                     help=f"Likelihood Regret variants, of {','.join(METHODS)}; the baselines always run")
    ood.add_argument("--load", type=Path, default=None, metavar="FILE",
                     help="score a saved state_dict (of --save, with the same --nf and --nz) instead of training")
    ood.add_argument("--save", type=Path, default=None, metavar="FILE", help="save the VAE's state_dict here")
    ood.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="where to train and score; auto is cuda when available")
    for field, (kind, text) in OOD_OVERRIDES.items():
        modes = "/".join("all" if v is None else f"{v:g}" for v in (getattr(MODES[m], field) for m in MODES))
        ood.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=argparse.SUPPRESS,
                         help=f"{text}; quick/default/full: {modes}")
    _add_mode_options(ood, quick=f"a smoke test with a barely trained VAE ({MODES['quick'].duration})",
                      full=f"the dissertation's settings: nf 32, nz 100, 100 epochs, K = 1000, LR_Z 300 steps, "
                           f"LR_E 100 steps, every test digit ({MODES['full'].duration})",
                      seed="seed of the weights, the data split, the OOD sets and every noise draw")
    ood.set_defaults(run=_ood, cmd_parser=ood)


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,ebm,warp,ood,bench,info}")
    _add_demo(sub)
    _add_ebm(sub)
    _add_warp(sub)
    _add_ood(sub)
    _add_bench(sub)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
