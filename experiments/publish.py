"""Refresh the tables inside ``docs/results/README.md`` from the experiments' ``<name>.md``
files, so the page always shows exactly what the runs wrote.

Between ``<!-- begin: NAME -->`` and ``<!-- end: NAME -->`` the page holds a copy of
``NAME.md``; everything else on the page is hand-written and left alone.

    python -m experiments.publish [--out docs/results]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from experiments.common import DEFAULT_OUT

BLOCK = re.compile(r"(<!-- begin: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)",
                   re.DOTALL)


def refresh(page: str, folder: Path) -> str:
    """The page with every block replaced by its file's text (or a note when it is missing)."""

    def fill(match: re.Match) -> str:
        source = folder / f"{match['name']}.md"
        body = source.read_text() if source.exists() else f"*({source.name} not produced yet)*\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    page = args.out / "README.md"
    page.write_text(refresh(page.read_text(), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
