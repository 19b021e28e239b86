"""The `hil` command line: one module per command family, each adding its sub-commands with
`add_parsers(subparsers)`; shared helpers in `common`. Command modules never import each other."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from hil import __version__, threads
from hil import options as opt
from hil.cli import experiments, gui, modules, params, program, runs, station, sweep, wang, yao
from hil.cli.common import one_line
from hil.errors import Cancelled, HilError

#: command families in the order `hil --help` lists them
FAMILIES = (program, experiments, modules, yao, wang, sweep, station, params, gui, runs)


def build_parser() -> argparse.ArgumentParser:
    """Every option is checked here, up front (hil.options), before any work or record change."""
    p = opt.Parser(prog="hil", description="Memristor crossbar hardware-in-the-loop control.")
    p.add_argument("--version", action="version", version=f"memristor-hil {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and show tracebacks of OS errors)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def main(argv=None) -> int:
    """Run `hil` with `argv` (default sys.argv[1:]); returns the exit code. If stdout is closed
    early (`hil info | head -1`) it stops quietly with 141, like other Unix tools."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()      # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # point stdout at devnull so the flush at exit cannot fail again (Python docs, "SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except opt.OptionError as e:
        print(one_line(e), file=sys.stderr)
        return 2
    args.station_given = any(a == "--station" or a.startswith("--station=") for a in argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        threads.configure_blas()
        return args.func(args)
    except BrokenPipeError:
        raise                       # stdout closed early: main stops quietly
    except Cancelled as e:
        print(f"hil: interrupted ({e}); what was recorded is kept", file=sys.stderr)
        return 130
    except HilError as e:
        print(f"hil: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        if args.verbose:
            raise
        print(f"hil: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hil: interrupted", file=sys.stderr)
        return 130
