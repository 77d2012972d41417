"""Print the fault-injection suite's record (``var/chaos/results.json``) as a Markdown table:
area | fault | what holds | figures | test outcome. ``make chaos`` prints it after the run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("pretraining", "serving", "deploy", "security")  # the table's order


def figures(entry: dict) -> str:
    return "; ".join(f"{name} {value}" for name, value in entry.get("figures", {}).items()) or "—"


def table(record: dict) -> str:
    lines = ["| area | fault | what holds | figures | test |", "|---|---|---|---|---|"]
    order = sorted(record["scenarios"], key=lambda s: (AREAS.index(s["area"]) if s["area"] in AREAS else 9, s["id"]))
    for s in order:
        outcome = "passed" if s.get("passed") else "**failed**"
        lines.append(f"| {s['area']} | {s['fault']} | {s['holds']} | {figures(s)} | {outcome} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("record", nargs="?", type=Path, default=ROOT / "var" / "chaos" / "results.json")
    args = p.parse_args(argv)
    if not args.record.is_file():
        print(f"no record at {args.record}: run `make chaos` first", file=sys.stderr)
        return 1
    record = json.loads(args.record.read_text())
    print(
        f"{len(record['scenarios'])} scenarios, servers kept down {record['outage_seconds']:.0f} s, "
        f"{record['machine']['cores']} cores, written {record['written_at']}\n"
    )
    print(table(record))
    return 0 if all(s.get("passed") for s in record["scenarios"]) else 1


if __name__ == "__main__":
    sys.exit(main())
