"""The floor of case b: read a JSON Lines file and parse every line, nothing else.

    python -m bench.floor FILE [--parser json|orjson]

Prints the number of records parsed. ``json`` (the standard library) is the floor the
target is set against; ``orjson`` is the parser the bridge itself uses first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("file")
    parser.add_argument("--parser", choices=("json", "orjson"), default="json")
    args = parser.parse_args(argv)
    loads: Callable[[bytes], Any]
    if args.parser == "orjson":
        import orjson

        loads = orjson.loads
    else:
        import json

        loads = json.loads
    parsed = 0
    with open(args.file, "rb") as fh:
        for line in fh:
            loads(line)
            parsed += 1
    print(parsed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
