"""The `ftkit` command: `ftkit doctor`, `ftkit prepare`, `ftkit run`.

A thin layer over the package for people who prefer a terminal (and for the
README's main job). Every command is a function you can also call from Python:
`ftkit run` is `ftkit.runner.run_series`, which executes the notebooks, prints a
line per section, and writes the executed copies and report.html to `--out`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _doctor(args: argparse.Namespace) -> int:
    from ftkit.doctor import doctor

    report = doctor()
    print(report)
    print("\nAll good." if report.ok else "\nSome items need fixing (see -> above).")
    return 0 if report.ok else 1


def _prepare(args: argparse.Namespace) -> int:
    from ftkit.models import embedded_model_dir

    print(f"Embedded model ready at {embedded_model_dir(rebuild=args.rebuild)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ftkit.runner import NotebookFailed, run_series

    parameters = {"MODEL": args.model} if args.model else None
    try:
        run_series(args.out, mode=args.mode, only=args.notebooks, parameters=parameters)
    except (NotebookFailed, FileNotFoundError) as error:
        print(f"[ftkit] {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ftkit` command."""
    parser = argparse.ArgumentParser(prog="ftkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="check this machine for the course").set_defaults(
        handler=_doctor
    )
    prepare = commands.add_parser("prepare", help="convert the embedded model into the cache")
    prepare.add_argument("--rebuild", action="store_true", help="convert again even if cached")
    prepare.set_defaults(handler=_prepare)
    run = commands.add_parser("run", help="execute the notebook series headless")
    run.add_argument("--mode", choices=("full", "smoke"), default="full")
    run.add_argument(
        "--out", default="build", help="folder for the executed notebooks and report.html"
    )
    run.add_argument("--model", default=None, help="override the notebooks' MODEL knob")
    run.add_argument("notebooks", nargs="*", help="prefixes such as 01 02 (default: all)")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ftkit` command."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
