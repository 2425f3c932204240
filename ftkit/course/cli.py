"""The `ftkit` command: `ftkit doctor`, `ftkit prepare`, `ftkit notebooks`, `ftkit run`.

A thin layer over the package for people who prefer a terminal (and for the
README's main job). Every command is a function you can also call from Python:
`ftkit run` is `ftkit.course.runner.run_series`, which executes the notebooks, prints a
line per section, and writes the executed copies, their runs and report.html to `--out`
(with `--data`, after `prepare_dataset` checked and split your data: bad data stops it
before any training, exit code 2);
`ftkit notebooks DEST` is `ftkit.course.notebooks.copy_notebooks`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ftkit.course.doctor import doctor
from ftkit.course.notebooks import copy_notebooks
from ftkit.task import TaskError
from ftkit.validation import DataError


def _doctor(args: argparse.Namespace) -> int:
    report = doctor()
    print(report)
    print("\nAll good." if report.ok else "\nSome items need fixing (see -> above).")
    return 0 if report.ok else 1


def _prepare(args: argparse.Namespace) -> int:
    # deferred: torch and transformers load in seconds, and `ftkit doctor` must run without them
    from ftkit.models import embedded_model_dir

    print(f"Embedded model ready at {embedded_model_dir(rebuild=args.rebuild)}")
    return 0


def _notebooks(args: argparse.Namespace) -> int:
    try:
        copied = copy_notebooks(args.destination, overwrite=args.force)
    except FileExistsError as error:
        print(f"[ftkit] {error}", file=sys.stderr)
        return 1
    print(f"Copied {len(copied)} files to {args.destination}. Open them with:")
    print(f"    jupyter lab {args.destination}")
    return 0


def missing_runner_packages() -> list[str]:
    """The packages of the course extra that the headless runner needs and cannot import."""
    import importlib.util

    needed = ("papermill", "nbclient", "ipykernel")  # ipykernel: the kernel it starts
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _run(args: argparse.Namespace) -> int:
    if missing := missing_runner_packages():
        print(
            f"[ftkit] `ftkit run` executes the notebooks headless with {' and '.join(missing)}, "
            "which come with the course extra and are not installed here. Run\n"
            "    pip install 'ftkit[course]'\n"
            "(or open the notebooks in your own Jupyter: `ftkit notebooks DEST`).",
            file=sys.stderr,
        )
        return 3
    # deferred: papermill and nbclient load in seconds, and `ftkit doctor` must not wait
    from ftkit.course.runner import (
        NotebookFailed,
        SeriesInterrupted,
        prepare_dataset,
        remove_scratch,
        run_series,
    )

    parameters = {"MODEL": args.model} if args.model else {}
    if args.data or args.dataset or args.task:
        try:
            parameters["DATASET"] = prepare_dataset(
                args.data or args.dataset or "support_tickets", args.out,
                strict=not args.lenient, task=args.task,
            )  # fmt: skip
        except (DataError, TaskError, FileNotFoundError, ValueError) as error:
            print(f"[ftkit] The data cannot be used, so nothing was run or trained.\n{error}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        run_series(args.out, mode=args.mode, only=args.notebooks, parameters=parameters,
                   lanes=args.lanes)  # fmt: skip
    except (NotebookFailed, FileNotFoundError) as error:
        print(f"[ftkit] {error}", file=sys.stderr)
        return 1
    except SeriesInterrupted as error:
        print(f"[ftkit] {error}", file=sys.stderr)
        return 130  # what a shell reports for Ctrl-C
    except KeyboardInterrupt:  # the second Ctrl-C
        print("\n[ftkit] Stopped at once: the kernels end with this process. Finished runs are "
              "kept; a training run continues from its last checkpoint when you run the same "
              "command again.", file=sys.stderr, flush=True)  # fmt: skip
        sys.stdout.flush()
        # At once: a normal exit would wait for the notebooks' threads, still talking to
        # kernels that end with this process (each watches its parent). Those threads'
        # temporary folders would stay behind: removed here.
        remove_scratch()
        os._exit(130)
    return 0


def _positive(text: str) -> int:
    """argparse's type for a count of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return int(text)


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
    notebooks = commands.add_parser(
        "notebooks", help="copy the notebook series (and solutions) into a folder to work in"
    )
    notebooks.add_argument("destination", help="the folder to copy them into")
    notebooks.add_argument("--force", action="store_true", help="replace files already there")
    notebooks.set_defaults(handler=_notebooks)
    run = commands.add_parser("run", help="execute the notebook series headless")
    run.add_argument("--mode", choices=("full", "smoke"), default="full")
    run.add_argument(
        "--out", default="build", help="folder for the executed notebooks, runs/ and report.html"
    )
    run.add_argument("--model", default=None, help="override the notebooks' MODEL knob")
    data = run.add_mutually_exclusive_group()
    data.add_argument("--data", help="your data: a .jsonl/.json/.csv/.parquet file, or a folder "
                      "with train/validation/test files")  # fmt: skip
    data.add_argument("--dataset", help="a shipped dataset (support_tickets, brand_voice, ...)")
    run.add_argument("--task", help="a task.json saying what an answer is (else inferred)")
    run.add_argument("--lenient", action="store_true",
                     help="drop bad rows (each reported) instead of stopping at them")  # fmt: skip
    run.add_argument("--lanes", type=_positive, default=None,
                     help="notebooks run at a time, each on its share of the CPU cores "
                     "(default: 2 on a CPU with the memory for it, else 1; 1: one after the "
                     "other on every core)")  # fmt: skip
    run.add_argument("notebooks", nargs="*", help="prefixes such as 01 02 (default: all)")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ftkit` command."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
