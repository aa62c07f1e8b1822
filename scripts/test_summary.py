"""Print per-tier test counts from the junit XML files, and fail on any skip.

python scripts/test_summary.py build/junit unit functional ...
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    return total


def main() -> int:
    folder, tiers = Path(sys.argv[1]), sys.argv[2:]
    ok = True
    grand = {"passed": 0, "failed": 0, "skipped": 0}
    print(f"{'tier':<12}{'ran':>6}{'passed':>8}{'failed':>8}{'skipped':>9}")
    for tier in tiers:
        path = folder / f"{tier}.xml"
        if not path.exists():
            print(f"{tier:<12}   no results (the tier did not run)")
            ok = False
            continue
        c = counts(path)
        failed = c["failures"] + c["errors"]
        passed = c["tests"] - failed - c["skipped"]
        grand["passed"] += passed
        grand["failed"] += failed
        grand["skipped"] += c["skipped"]
        print(f"{tier:<12}{c['tests']:>6}{passed:>8}{failed:>8}{c['skipped']:>9}")
        if failed or c["skipped"] or c["tests"] == 0:
            ok = False
    if grand["skipped"]:
        print(f"skip summary: {grand['skipped']} skipped - expected 0 on this kind of machine")
    else:
        print("skip summary: 0 skipped")
    print(f"{grand['passed']} passed, {grand['failed']} failed, {grand['skipped']} skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
