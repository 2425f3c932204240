"""Run a command as if this CPU had AVX2 only: ftkit in fp32, torch and oneDNN on AVX2 kernels.

The course's slower CPU kind, a 2-core AMD EPYC with AVX2 only, has no native bf16, and
ftkit computes in fp32 there (twice the time of bf16 on the other kind). This runs a
command, and every Python process it starts (notebook kernels, a benchmark's workers), on a
x86 CPU with AVX512-BF16 as a stand-in for that kind:

- torch's checks for native bf16 and AMX answer False (`as_avx2_site/sitecustomize.py`,
  put on PYTHONPATH), so ftkit's `detect_hardware` chooses fp32;
- `ATEN_CPU_CAPABILITY=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2`: torch's own kernels and
  oneDNN's use AVX2 instructions only (MKL's matrix products keep their own choice).

    .venv/bin/python benchmarks/as_avx2.py make main
    .venv/bin/python benchmarks/as_avx2.py .venv/bin/python benchmarks/train_vs_trl.py \\
        --methods qlora --trainers ftkit --rounds 1 --limit 256 --eval-tickets 0

A stand-in, not the machine: the same code ran 1.25-1.35x slower on the real AVX2-only
EPYC than under this script on the AVX512-BF16 one (RESULTS.md, 2026-12-06, eighteenth
session), so scale a time by that before comparing it with the 30 minutes asked of that
kind. Numbers match the other kind's fp32 runs (the same validation loss to the digit).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "as_avx2_site"


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment by default) with the stand-in's settings."""
    env = dict(os.environ if base is None else base)
    path = [str(SITE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return env | {
        "FTKIT_AS_AVX2": "1",
        "PYTHONPATH": os.pathsep.join(path),
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        os.execvpe(argv[0], argv, environment())
    except FileNotFoundError:
        print(f"[as_avx2] no such command: {argv[0]}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
