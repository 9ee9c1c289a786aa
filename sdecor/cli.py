"""The ``sdecor`` command.

Each sub-command lives in :mod:`sdecor.commands` as a module with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad arguments exit with status 2 and a
one-line message (argparse's convention); a ``ValueError``/``TypeError`` raised by a command is
printed as ``sdecor <command>: error: ...`` with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("compare", "explain", "bench", "ssl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdecor", description="SaliencyDecor training, saliency evaluation and kernel benchmarks."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"sdecor.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        args._parser.exit(2, f"sdecor {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
