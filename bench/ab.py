"""Same-run A/B of two storagectl trees on one sandbox: ``inspect`` and ``audit`` of N
instances through the libvirt test driver, alternating A and B so machine noise hits both.

    python bench/ab.py OLD_TREE NEW_TREE [N] [PAIRS]

Each tree is imported through PYTHONPATH (its own checkout of storagectl); the sandbox is
built and persisted once by NEW_TREE. Prints one Markdown table (median / best seconds and
the B/A ratio of the medians); bench/RESULTS.md quotes it for refactorings.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def storagectl(tree: str, *args: str, ok: tuple[int, ...] = (0,)) -> float:
    env = {**os.environ, "PYTHONPATH": tree, "STORAGECTL_LOG_FILE": "/dev/null"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "storagectl", *args], env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{tree}: storagectl {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return took


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    pairs = int(sys.argv[4]) if len(sys.argv) > 4 else 7
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp) / "node"
        storagectl(new, "sandbox", "create", str(root), "--instances", str(n))
        common = ["-c", f"test://{root}/node.xml", "--nova-conf", f"{root}/etc/nova/nova.conf"]
        common += ["--lock-path", str(Path(tmp) / "locks")]
        storagectl(new, *common, "persist", "--all", ok=(0, 1))
        rows = []
        for what, args, ok in (
            ("inspect -o json", ["inspect", "-o", "json"], (0, 1)),
            ("audit -o json", ["audit", "-o", "json"], (0, 1, 2)),
        ):
            times: dict[str, list[float]] = {old: [], new: []}
            for _ in range(pairs):
                for tree in (old, new):
                    times[tree].append(storagectl(tree, *common, *args, ok=ok))
            a, b = statistics.median(times[old]), statistics.median(times[new])
            rows.append(
                f"| {what} | {n} | {a:.2f} / {min(times[old]):.2f} | "
                f"{b:.2f} / {min(times[new]):.2f} | {b / a:.2f} |"
            )
    print(
        f"| command | instances | A median / best (s) | B median / best (s) | B/A | ({pairs} pairs)"
    )
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
