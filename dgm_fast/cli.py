"""The ``dgm-fast`` command: ``demo`` (the end-to-end models) and ``bench``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from dgm_fast.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)


def _bench(args: argparse.Namespace) -> None:
    from dgm_fast.benchmark import run_bench

    run_bench(args.results, quick=args.quick, device=args.device, pytest_args=args.pytest_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgm-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train toy EBMs with noisy and noise-free Langevin dynamics (§2.4.6)")
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the figure and metrics")
    demo.add_argument("--quick", action="store_true", help="a short run (seconds) to smoke-test")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    bench = sub.add_parser("bench", help="benchmark dgm_fast against eager and compiled PyTorch")
    bench.add_argument("--results", type=Path, default=None, help="folder for the JSON (default bench/results)")
    bench.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
