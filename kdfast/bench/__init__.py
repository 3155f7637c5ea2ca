"""Microbenchmark suites (``kdfast bench SUITE``); the harness is :mod:`kdfast.bench.harness`."""
from __future__ import annotations

import importlib

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
    return importlib.import_module(SUITES[args.suite]).main(quick=args.quick, out_dir=args.out)
