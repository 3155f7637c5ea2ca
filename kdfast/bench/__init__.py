"""Microbenchmark suites (``kdfast bench SUITE``); the harness is :mod:`kdfast.bench.harness`."""
from __future__ import annotations

import importlib
import os

SUITES = {
    "losses": "kdfast.bench.losses",
    "intermediate": "kdfast.bench.intermediate",
    "bilstm": "kdfast.bench.bilstm",
    "etd": "kdfast.bench.etd",
    "relation": "kdfast.bench.relation",
}


def run_bench(args) -> int:
    if args.suite not in SUITES:
        raise SystemExit(f"unknown suite {args.suite!r}; choose from {sorted(SUITES)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):  # before minutes of timing
        raise ValueError(f"--out {args.out}: a file, not a directory")
    return importlib.import_module(SUITES[args.suite]).main(quick=args.quick, out_dir=args.out)
