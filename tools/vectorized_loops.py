"""Map GCC's ``-fopt-info-vec-optimized`` report from generated C back to .pyx lines.

Usage: python tools/vectorized_loops.py REPORT SOURCE_ROOT

Cython precedes the C code of every .pyx statement with a comment naming its
source (``/* "pyconv/_core/x.pyx":123``); a vectorized C line is attributed
to the last such comment above it.  Prints one line per kernel source line.
"""
import re
import sys
from collections import Counter
from pathlib import Path

SOURCE_COMMENT = re.compile(r'^/\* "([^"]+\.pyx)":(\d+)')
VECTORIZED = re.compile(r"^(\S+\.c):(\d+):\d+: optimized: loop vectorized using (\d+) byte vectors")


def pyx_line_map(c_file: Path) -> list:
    """For each C line (1-based index), the "file.pyx:line" it was generated from."""
    current, mapping = "?", [None]
    for line in c_file.read_text(errors="replace").splitlines():
        match = SOURCE_COMMENT.match(line)
        if match:
            current = f"{match.group(1)}:{match.group(2)}"
        mapping.append(current)
    return mapping


def main(report: str, root: str) -> None:
    maps, found = {}, Counter()
    for line in Path(report).read_text(errors="replace").splitlines():
        match = VECTORIZED.match(line)
        if not match:
            continue
        c_file, c_line, width = match.group(1), int(match.group(2)), match.group(3)
        if c_file not in maps:
            maps[c_file] = pyx_line_map(Path(root) / c_file)
        found[(maps[c_file][c_line], width)] += 1
    for (where, width), count in sorted(found.items()):
        print(f"{where:<40} {width}-byte vectors  x{count}")
    print(f"{len(found)} kernel source lines with vectorized loops")


if __name__ == "__main__":
    main(*sys.argv[1:3])
