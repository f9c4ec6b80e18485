"""The ``graphduel`` command (also ``python -m compare``)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    """Train a small classifier eagerly and print the loss curve and accuracy."""
    from compare.demo import train_spiral_classifier
    result = train_spiral_classifier(steps=args.steps, seed=args.seed, log=print)
    print(f"final loss {result['loss']:.4f}, accuracy {result['accuracy']:.1%} "
          f"({result['steps']} Adam steps, {result['seconds']:.2f} s on cpu)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphduel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small classifier with the eager engine")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
