"""The ``kdfast`` command line: ``kdfast info|demo|finetune|distill|tinybert|etd-distill|extract|bench``."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    import kdfast

    info = kdfast.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "backends":
            print(f"{key:12s} {value}")
    print("backends:")
    for name, b in info["backends"].items():
        state = "present" if b["present"] else f"absent ({b['why_absent']})"
        print(f"  {name:10s} {state}")
    return 0


def _cmd_demo(args) -> int:
    from kdfast.demo import run_demo

    return run_demo(args)


def _cmd_bench(args) -> int:
    from kdfast.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions and available backends")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    from kdfast.demo import add_arguments as add_demo_arguments

    p = sub.add_parser("demo", help="kdfast's main job: fine-tune the offline teacher, distil "
                       "BiLSTM students, print accuracy/size/speed (CPU, minutes)")
    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="run a microbenchmark suite")
    p.add_argument("suite", help="which suite: losses (see benchmarks/)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    p.add_argument("--out", default="benchmarks/results", help="where results go")
    p.set_defaults(func=_cmd_bench)

    from kdfast.distill.cli import add_parsers as add_distill_parsers
    from kdfast.distill.tinybert import add_parsers as add_tinybert_parsers
    from kdfast.etd.cli import add_extract_parser

    add_distill_parsers(sub)
    add_tinybert_parsers(sub)
    add_extract_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
