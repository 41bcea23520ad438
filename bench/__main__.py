"""`make bench`: runs every benchmark module in bench/ (files not starting with `_`), one
process each so they don't disturb one another, and prints their reports in order.
`python -m bench NAME... [--option ...]` runs only those, passing them the options; the opt-in
modules (OPT_IN) run only so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run only when named (`python -m bench soak`): the soak holds the machine for minutes.
OPT_IN = {"soak"}


def main() -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    arguments = sys.argv[1:]
    first_option = next((i for i, a in enumerate(arguments) if a.startswith("-")), len(arguments))
    only, options = arguments[:first_option], arguments[first_option:]
    failed = []
    for name in names:
        if (only and name not in only) or (not only and name in OPT_IN):
            continue
        print(f"\n## bench.{name}\n", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}", *options]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
