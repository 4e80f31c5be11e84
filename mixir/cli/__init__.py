"""The ``mixir`` command (also ``python -m mixir``): list, show, verify, compile, demo and tune.

Only ``argparse`` is imported here: ``mixir --help``, ``--version`` and every subcommand's
``--help`` start without torch, and ``mixir list`` reads a cached table (``listing``). Each
subcommand imports what it needs when it runs (``commands``, ``tune``).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import MixirError
from ..version import __version__

_NAME_HELP = ("a name `mixir list` prints (a library mixer, lssl / lmu, attention:MASK[:ARG,...]), "
              "or a declaration of yours as module:function (imported from the current directory) "
              "or path/to/file.py:function")


def _run(fn: str):
    """The subcommand ``fn`` of ``mixir.cli.commands``, imported when it runs."""
    def call(args):
        from . import commands
        return getattr(commands, fn)(args)
    return call


def _compile_options(s):
    s.add_argument("--workers", type=int, default=None,
                   help="compile worker processes (default: one per CPU; 0: in this process, "
                        "without the time limit)")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one kernel compile may take before its worker is killed (default 300)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixir", description="mixir, a compiler for token mixers: declare a mixer once, get "
        "Triton kernels, a float64 reference, differential checks and an ahead-of-time report.",
        epilog="`mixir COMMAND --help` describes each command's options.")
    p.add_argument("--version", action="version", version=f"mixir {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="every library name with its family, strategies and class",
                       description="Every library name (mixers, wrappers, attention masks) with the "
                                   "family that lowers it, its strategies and its class. The table "
                                   "is cached until mixir's sources change.")
    s.add_argument("--refresh", action="store_true", help="rebuild the cached table")
    s.set_defaults(fn=_run("cmd_list"))

    s = sub.add_parser("show", help="traced IR, classification, strategy, generated Triton files",
                       description="The traced declaration, its family's analysis and plan, the "
                                   "generated Triton source files and the tuning formulas.")
    s.add_argument("mixer", help=_NAME_HELP)
    s.set_defaults(fn=_run("cmd_show"))

    s = sub.add_parser("verify", help="differential check against the float64 reference on CPU",
                       description="Run every strategy forward and backward (Triton's interpreter "
                                   "without a GPU) on example inputs and compare outputs, final "
                                   "states and gradients with the float64 reference, per dtype. "
                                   "Exit status 1 when a check fails.")
    s.add_argument("mixer", help=_NAME_HELP)
    s.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"],
                   help="input dtypes to check (float32, bfloat16, float16; default all three)")
    s.add_argument("--T", type=int, default=40, help="sequence length of the example inputs (default 40)")
    s.add_argument("--seed", type=int, default=0, help="seed of the example inputs (default 0)")
    s.set_defaults(fn=_run("cmd_verify"))

    s = sub.add_parser("compile", help="ahead-of-time build and resource table (ptxas)",
                       description="Record every kernel launch of every strategy (forward and "
                                   "backward) on CPU and build each for the given architectures: "
                                   "registers, spills, shared and local memory per kernel.")
    s.add_argument("mixer", help=_NAME_HELP)
    s.add_argument("--arch", nargs="+", default=["sm_90"], help="architectures (sm_80, sm_90; default sm_90)")
    s.add_argument("--dtype", default="bfloat16", help="input dtype of the recorded launches (default bfloat16)")
    _compile_options(s)
    s.set_defaults(fn=_run("cmd_compile"))

    s = sub.add_parser("demo", help="declare -> compile -> verify -> AOT report on a built-in mixer",
                       description="show, verify (float32, bfloat16) and compile (sm_90) one mixer.")
    s.add_argument("mixer", nargs="?", default="gla", help="a library name (default gla)")
    s.set_defaults(fn=_run("cmd_demo"))

    from .tune import add_tune
    add_tune(sub, _NAME_HELP, _compile_options)
    return p


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the exit status (0 ok, 1 a failed
    check or write, 2 a usage error)."""
    args = parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except MixirError as e:
        print(f"mixir: error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "parser"]
