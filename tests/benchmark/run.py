"""The benchmark: ``make bench`` (``python tests/benchmark/run.py [--quick] [--only ...]``).

Starts a private RabbitMQ node, gateways and daemons as subprocesses, prints a table and
writes JSON. Every figure is compared with a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # these modules, then tests/ (stack.py)

from common import Context, Row, machine  # noqa: E402
from diarization import diarization  # noqa: E402
from fanout import fanout  # noqa: E402
from http_load import gateway_load, gateway_memory  # noqa: E402
from live import live  # noqa: E402
from memory import long_recordings  # noqa: E402
from scaleout import scaleout  # noqa: E402
from whisper import daemon_memory, overhead, throughput  # noqa: E402

from stt_daemon.localbroker import LocalRabbitNode  # noqa: E402

Section = Callable[[Context], Awaitable[list[Row]]]

SECTIONS: dict[str, list[Section]] = {
    "throughput": [throughput],
    "gateway": [gateway_load],
    "overhead": [overhead],
    "memory": [gateway_memory, daemon_memory, long_recordings],
    "scaleout": [scaleout],
    "fanout": [fanout],
    "live": [live],
    "diarization": [diarization],
}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    lines = [
        "| Figure | Value | Baseline | Ratio | Target | Met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        baseline = f"{_fmt(r.baseline)} ({r.baseline_label})" if r.baseline is not None else "-"
        met = "-" if r.met is None else ("met" if r.met else "not met")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        value = f"{_fmt(r.value)} {r.unit}"
        lines.append(f"| {r.metric} | {value} | {baseline} | {ratio} | {r.target or '-'} | {met} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, ctx: Context) -> list[Row]:
    """Each chosen section in order; stop every process afterwards."""
    rows: list[Row] = []
    try:
        for name in args.only:
            for section in SECTIONS[name]:
                started = time.monotonic()
                print(f"-- {name}: {section.__name__} ...", file=sys.stderr, flush=True)
                rows += await section(ctx)
                print(f"   {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        for stack in reversed(ctx.stacks):
            await stack.stop_all()
        ctx.details.pop("whisper_stack", None)
    return rows


def parse_args() -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller batches (about 2 minutes)")
    parser.add_argument(
        "--only",
        type=lambda s: [part for part in s.split(",") if part],
        default=list(SECTIONS),
        help=f"comma-separated sections of {','.join(SECTIONS)}",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/latest.json"))
    args = parser.parse_args()
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    return args


def main() -> None:
    """Start a broker, run the sections, print the table, write the JSON."""
    args = parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="stt-bench-"))
    node = None
    amqp_url = os.environ.get("STT_BENCH_AMQP_URL")
    if not amqp_url:
        node = LocalRabbitNode()
        node.start()
        amqp_url = node.url
    started = time.monotonic()
    try:
        ctx = Context(amqp_url=amqp_url, work_dir=work_dir, quick=args.quick)
        rows = asyncio.run(run(args, ctx))
    finally:
        if node is not None:
            node.stop()
            node.cleanup()
        shutil.rmtree(work_dir, ignore_errors=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sections": args.only,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "rows": [r.as_dict() for r in rows],
        "details": ctx.details,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(table(rows))
    print(
        f"\n{report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"{report['duration_s']} s; JSON: {args.out}"
    )


if __name__ == "__main__":
    main()
