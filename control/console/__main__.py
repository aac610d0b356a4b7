"""`python -m control.console --bind 127.0.0.1 --port 8080`: the console, as `inferstream console`.

Settings (Kafka, namespace, TLS) come from the INFERSTREAM_* environment.
"""

from __future__ import annotations

import argparse

from control.config import Settings
from control.console.app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m control.console",
                                     description="Serve the inferstream web console.")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    args = parser.parse_args(argv)
    serve(Settings(), args.bind, args.port)


if __name__ == "__main__":
    main()
