"""Print the entries of a pip-compile lock for the given package names (with hashes).

    python3 scripts/lockpick.py requirements-test.lock setuptools wheel

setup.sh installs the build tools this way before the rest of the lock, so libvirt-python
(an sdist) and storagectl are built with locked tools, not whatever is newest on PyPI.
"""

import re
import sys


def entries(text):
    """Yield (normalised name, block) for each ``name==version`` entry of a lock."""
    name, block = None, []
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==", line)
        if m or not line.startswith(" "):
            if name:
                yield name, "\n".join(block)
            name, block = (re.sub(r"[-_.]+", "-", m.group(1)).lower(), [line]) if m else (None, [])
        elif name:
            block.append(line)
    if name:
        yield name, "\n".join(block)


def main(argv):
    path, wanted = argv[0], {re.sub(r"[-_.]+", "-", n).lower() for n in argv[1:]}
    with open(path, encoding="utf-8") as f:
        found = {n: b for n, b in entries(f.read()) if n in wanted}
    missing = wanted - found.keys()
    if missing:
        print(f"lockpick: {path} has no entry for {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    for name in sorted(found):
        print(found[name].rstrip(" \\").replace(" \\\n    # via", "\n    # via"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
