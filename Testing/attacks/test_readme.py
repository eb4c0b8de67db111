"""The attack matrix in Testing/attacks/README.md counts the cases that are collected, class by class."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_readme_counts_match_the_collected_cases():
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
                       capture_output=True, text=True, timeout=600, cwd=HERE.parents[1])
    collected = Counter(Path(line.split("::")[0]).name for line in r.stdout.splitlines() if "::" in line)
    collected.pop("test_readme.py", None)
    table = {}
    for line in (HERE / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*[^|]+\|\s*(test_\w+\.py)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)", line)
        if m:
            cases, refused, explicit, xfail = map(int, m.groups()[1:])
            assert cases == refused + explicit + xfail, line
            table[m.group(1)] = cases
    assert table == dict(collected), (table, dict(collected))
    total = re.search(r"\*\*total\*\* \| \| \*\*(\d+)\*\*", (HERE / "README.md").read_text())
    assert total and int(total.group(1)) == sum(collected.values())
