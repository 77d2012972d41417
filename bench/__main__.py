"""``make bench``: every figure is a ratio of two rates measured in the same run.

    python -m bench [--only input_pipeline,horovod,curation,tfrecords,serving] [--quick]

Prints a table and writes ``bench/results.json``: ``{name: {value, baseline, ratio, target, unit, met, note}}``.
Benchmarks are not tests: nothing here fails a build; the targets are reported, met or not.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

from bench.common import RESULTS, save

SUITES = {
    "input_pipeline": "bench.input_pipeline",
    "horovod": "bench.horovod_scaling",
    "curation": "bench.curation",
    "tfrecords": "bench.tfrecords",
    "serving": "bench.serving",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the benchmarks.")
    p.add_argument("--only", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES))
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    table = Table(title="tlpipe benchmarks (ratio = value / baseline, same run)")
    for col in ("figure", "value", "baseline", "ratio", "target", "met", "note"):
        table.add_column(col, overflow="fold")
    for name in args.only.split(","):
        t0 = time.perf_counter()
        console.print(f"[bold]running {name}…[/bold]")
        results = importlib.import_module(SUITES[name]).run(quick=args.quick)
        save(results)
        console.print(f"  {name}: {time.perf_counter() - t0:.0f} s")
        for key, r in results.items():
            met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r.met]
            table.add_row(
                key,
                f"{r.value:,.1f} {r.unit}",
                f"{r.baseline:,.1f}",
                f"{r.ratio:.2f}",
                f"value < {r.max_value:.2f}"
                if r.max_value is not None
                else "-"
                if r.target is None
                else f">= {r.target}",
                met,
                r.note,
            )
    console.print(table)
    console.print(f"written: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
