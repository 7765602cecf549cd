"""Command line: ``python -m scvae demo|fit|embed`` (or the ``scvae`` console script)."""

from __future__ import annotations

import argparse
import logging
import sys

from ._cli import Interrupted, add_commands, run_command
from ._demo import format_table, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scvae", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help=(
            "fit on built-in simulated data with holes; write embedding, imputed values, "
            "generated cells, figures and model"
        ),
    )
    demo.add_argument("--out", default="scvae_demo", help="output folder (default: scvae_demo)")
    demo.add_argument("--quick", action="store_true", help="small, short run (smoke test)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_commands(commands)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            scores = run_demo(args.out, quick=args.quick, progress=not args.no_progress)
            sys.stdout.write(format_table(scores) + f"\n\nwritten to {args.out}/\n")
            return 0
        return run_command(args)
    except (KeyboardInterrupt, Interrupted) as stop:
        if args.debug:
            raise
        said = str(stop) or "interrupted before the results were written; nothing was written"
        sys.stderr.write(f"scvae {args.command}: {said}\n")
        return 130
    except Exception as error:  # one line a user reads; --debug shows where it came from
        if args.debug:
            raise
        sys.stderr.write(
            f"scvae {args.command}: error: {_for_the_command_line(error)}\n"
            "(--debug shows the traceback)\n"
        )
        return 1


def _for_the_command_line(error: Exception) -> str:
    """The error's message as a command-line user needs it: a KeyError's without the quotes
    ``str`` puts around it, advice to call ``adata.to_memory()`` as the flag that does it."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "to_memory()" in message:
        message += " (on the command line: --in-memory)"
    return message


if __name__ == "__main__":
    raise SystemExit(main())
