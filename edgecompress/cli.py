"""The ``edgecompress`` command-line tool, generated from the subcommands in ``edgecompress.commands``.

Exit codes: 0 success, 1 failure (one line on stderr; the traceback only with ``--debug``),
2 bad usage (argparse) or bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from edgecompress import __version__
from edgecompress.errors import BadInputError, EdgeCompressError


def build_parser() -> argparse.ArgumentParser:
    from edgecompress.commands import discover

    parser = argparse.ArgumentParser(
        prog="edgecompress",
        description="Compress PyTorch models for edge devices (OTOv2 pruning, LR2VQ, INT8, SpaceEvo), "
                    "export them, compile them and measure them on the device.")
    parser.add_argument("--version", action="version", version=f"edgecompress {__version__}")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in discover():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        cmd.configure(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data, text = args._command.run(args)
    except KeyboardInterrupt:
        print("edgecompress: interrupted", file=sys.stderr)
        return 130
    except (EdgeCompressError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        kind = "bad input" if isinstance(exc, (BadInputError, ValueError, FileNotFoundError)) else "error"
        print(f"edgecompress {args.command}: {kind}: {exc}", file=sys.stderr)
        return 2 if kind == "bad input" else 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints one line, not a traceback
        if args.debug:
            raise
        print(f"edgecompress {args.command}: failed: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
