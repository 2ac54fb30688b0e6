"""`mmpo report RUN_DIR [RUN_DIR ...] --out DIR`: compare finished runs (table + plots)."""

from __future__ import annotations

import argparse


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (output_dir of mmpo rm / mmpo dpo)")
    p.add_argument("--out", default="report", help="directory for report.md, summary.json and the PNGs")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmpo.reports.report import write_report

    write_report(args.runs, args.out)
    out = Path(args.out)
    print((out / "report.md").read_text())
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".md", ".json", ".png"))
    print(f"wrote the report to {out.resolve()}: {', '.join(written)}")
    return 0
