"""`python -m schemas freeze`: keep the current schema versions so old records still decode."""

import sys

from schemas.codec import freeze


def main() -> int:
    if sys.argv[1:] != ["freeze"]:
        print("usage: python -m schemas freeze", file=sys.stderr)
        return 2
    for path in freeze():
        print(f"froze {path.name}")
    return 0


sys.exit(main())
