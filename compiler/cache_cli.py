"""``graphduel cache``: the kernel cache's location, size and entries, and clearing it.

    graphduel cache                    # where it is, how many entries, how big, its bound
    graphduel cache list               # one line per entry, least recently used first
    graphduel cache prune              # remove least-recently-used entries down to the bound
    graphduel cache prune --max-size 200M
    graphduel cache clear              # remove every entry (those another process is loading stay)

The bound is ``$GRAPHDUEL_CACHE_MAX_SIZE`` (default 1 GiB; ``unlimited`` for none) and the location
``$GRAPHDUEL_CACHE_DIR`` (see ``compiler.runtime.cache``).

    >>> human(1536), human(3 << 30)
    ('1.5 KiB', '3.0 GiB')
"""

from __future__ import annotations

import argparse
import sys
import time

from compiler.runtime import cache


def human(n: int) -> str:
    """Sizes as a person reads them (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphduel cache", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("info", help="location, entries, size and bound (the default)")
    sub.add_parser("list", help="every entry: key, size, last used, source file")
    prune = sub.add_parser("prune", help="remove least-recently-used entries down to the bound")
    prune.add_argument("--max-size", help="bound for this prune (default: $GRAPHDUEL_CACHE_MAX_SIZE or 1 GiB)")
    sub.add_parser("clear", help="remove every entry no process is loading")
    return parser


def _info() -> int:
    found = cache.entries()
    bound = cache.max_size()
    print(f"kernel cache: {cache.cache_dir()}")
    print(f"entries: {len(found)}, size: {human(sum(e.size for e in found))}, "
          f"bound: {'unlimited' if bound is None else human(bound)} (GRAPHDUEL_CACHE_MAX_SIZE)")
    return 0


def _list() -> int:
    now = time.time()
    for e in cache.entries():
        age = now - e.last_used
        when = f"{age / 86400:.1f} d" if age >= 86400 else f"{age / 3600:.1f} h" if age >= 3600 else f"{age:.0f} s"
        source = e.source.name if e.source else "-"
        print(f"{e.key}  {human(e.size):>10}  used {when:>7} ago  {source}")
    return 0


def _removed(entries: list) -> int:
    print(f"removed {len(entries)} entries ({human(sum(e.size for e in entries))})")
    return 0


def cache_command(argv: list[str]) -> int:
    """Run ``graphduel cache ARGV``; returns the exit status (2 for a bad argument, with one clear line)."""
    args = _parser().parse_args(argv)
    try:
        if args.action in (None, "info"):
            return _info()
        if args.action == "list":
            return _list()
        if args.action == "clear":
            return _removed(cache.clear())
        limit = cache.max_size() if args.max_size is None else cache.parse_size(args.max_size)
        return _removed(cache.evict(limit))
    except ValueError as e:  # a size that is not one (the flag or the environment variable)
        print(f"graphduel cache: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cache_command(sys.argv[1:]))
