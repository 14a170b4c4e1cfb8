"""``featurestore``: the store from the command line, through :class:`featurestore.Client`.

Exit codes: 0 done; 1 not found; 2 usage or input the store refused (400, 413, 422);
3 the store is unreachable or unavailable (no answer, 503 after the retries);
4 anything else the store refused (401, 403, 500, 507) and loads with rejected events.
"""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (BarColumn, Progress, ProgressColumn, TaskProgressColumn,
                           TextColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from featurestore import errors
from featurestore import loader as L
from featurestore import loadtest
from featurestore.client import DEFAULT_URL, Client

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"  # the benchmarks of a source checkout
NOT_FOUND, USAGE, UNREACHABLE, REFUSED = 1, 2, 3, 4
_EXIT = {errors.NotFound: NOT_FOUND, errors.BadRequest: USAGE, errors.PayloadTooLarge: USAGE,
         errors.Unreachable: UNREACHABLE, errors.Unavailable: UNREACHABLE}


def _exit_code(exc: errors.FeatureStoreError) -> int:
    return next((code for cls, code in _EXIT.items() if isinstance(exc, cls)), REFUSED)


class _Group(click.Group):
    """Every store error becomes one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.FeatureStoreError as exc:
            click.echo(f"featurestore: {exc}", err=True)
            ctx.exit(_exit_code(exc))
        except L.InputError as exc:
            click.echo(f"featurestore: {exc}", err=True)
            ctx.exit(USAGE)


def store_options(fn):
    """--url, --token and --timeout, from FS_URL / FS_TOKEN too; the command gets a ``client``."""
    @click.option("--url", envvar="FS_URL", default=DEFAULT_URL, show_default=True,
                  help="the store's HTTP address (FS_URL)")
    @click.option("--token", envvar="FS_TOKEN", default=None, help="bearer token (FS_TOKEN)")
    @click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per request")
    @click.pass_context
    def wrapper(ctx: click.Context, url: str, token: str | None, timeout: float, **kwargs):
        client = ctx.with_resource(Client(url, token, timeout_s=timeout))
        return ctx.invoke(fn, client, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _print_json(obj: Any) -> None:
    console = Console()
    if console.is_terminal:
        console.print_json(data=obj)
    else:
        click.echo(json.dumps(obj, ensure_ascii=False))


def _time(text: str | None) -> str | float | None:
    """Epoch seconds as a number, anything else as the text the store parses."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n")[1])
def main() -> None:
    """Read, write, load and watch a sharded feature store."""


@main.command()
@click.argument("entity")
@click.argument("name", required=False)
@store_options
def get(client: Client, entity: str, name: str | None) -> None:
    """Print an ENTITY's features, or its feature NAME, as JSON."""
    found = client.get_feature(entity, name) if name else client.get_entity(entity)
    _print_json(dataclasses.asdict(found))


@main.command()
@click.argument("entity")
@click.argument("name")
@click.argument("value")
@click.option("--time", "event_time", metavar="T", help="event time: RFC 3339 or epoch seconds (default: now)")
@click.option("--string", "as_string", is_flag=True, help="store VALUE as text even if it reads as JSON")
@store_options
def put(client: Client, entity: str, name: str, value: str, event_time: str | None, as_string: bool) -> None:
    """Write feature NAME of ENTITY. VALUE is JSON when it reads as JSON (1.5, true, [1,2]), else text."""
    result = client.put(entity, name, value if as_string else _value(value), _time(event_time))
    _print_json(dataclasses.asdict(result))


@main.command()
@click.argument("entity")
@click.argument("name", required=False)
@store_options
def delete(client: Client, entity: str, name: str | None) -> None:
    """Delete an ENTITY, or only its feature NAME."""
    _print_json({"deleted": client.delete(entity, name)})


class _EventsColumn(ProgressColumn):
    """Events read so far and their rate (the bar and the ETA follow the bytes read)."""

    def render(self, task) -> Text:
        n, elapsed = task.fields.get("events", 0), task.elapsed
        rate = f", {n / elapsed:,.0f} events/s" if elapsed else ""
        return Text(f"{n:,} events{rate}", style="progress.data.speed")


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
              help="auto: csv for a .csv file, else JSON lines")
@click.option("--batch", type=click.IntRange(1, 100_000), default=500, show_default=True, help="events per request")
@click.option("--ingest", "ingest_endpoint", metavar="ENDPOINT",
              help="send to the ingest process's ZeroMQ socket (tcp://host:5690) instead of HTTP")
@store_options
@click.pass_context
def load(ctx: click.Context, client: Client, file, fmt: str, batch: int, ingest_endpoint: str | None) -> None:
    """Bulk-load FILE ('-' = stdin) of JSON lines or CSV, in batches; print what was written,
    stale (older than the stored values) and rejected, with the reasons."""
    if fmt == "auto":
        fmt = "csv" if str(getattr(file, "name", "")).lower().endswith(".csv") else "jsonl"
    counted = L.CountingLines(file)
    lines = L.read_csv(counted.text()) if fmt == "csv" else L.read_jsonl(counted)
    summary = L.Summary()
    if ingest_endpoint:
        from ingest.producer import Producer  # the ingest package of this source tree

        sink = L.IngestSink(ctx.with_resource(Producer(ingest_endpoint, timeout_s=client.timeout_s)))
        send = sink.send
    else:
        send = lambda b: L.send_http(client, b, summary)  # noqa: E731
    console = Console(stderr=True)
    with Progress(TextColumn("loading"), BarColumn(), TaskProgressColumn(), _EventsColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("load", total=_size(file), events=0)
        L.load(lines, batch, send, summary, lambda: bar.update(task, completed=counted.bytes, events=summary.events))
        if ingest_endpoint:
            sink.finish(summary)
    _print_summary(summary)
    if summary.rejected:
        ctx.exit(REFUSED)


def _size(fh) -> int | None:
    try:
        st = os.fstat(fh.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if st.st_size else None


def _print_summary(s: L.Summary) -> None:
    click.echo(f"{s.events} events: {s.written} values written, {s.stale} stale, {s.rejected} rejected")
    for reason in s.reasons:
        click.echo(f"  rejected: {reason}")
    if s.rejected > len(s.reasons):
        click.echo(f"  ... and {s.rejected - len(s.reasons)} more")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print /stats as JSON instead of a table")
@store_options
def status(client: Client, as_json: bool) -> None:
    """The shards (state, entities, values, memory, log) and ingest, as a table."""
    stats, ready = client.stats(), client.ready()
    if as_json:
        _print_json(stats)
        return
    ready_by_shard = {s["shard"]: s["ready"] for s in ready.shards}
    table = Table(title=f"{client.url}: {'ready' if ready.ready else 'NOT READY'}")
    columns = ["entities", "values", "memory_bytes", "log_bytes", "writes", "stale"]
    for col in ["shard", "state", *columns]:
        table.add_column(col, justify="left" if col == "state" else "right")
    for i, shard in enumerate(stats["shards"]):
        index = shard.get("shard", i)
        state = f"down: {shard['detail']}" if "detail" in shard else (
            "ready" if ready_by_shard.get(index) else "recovering")
        table.add_row(str(index), state, *(_number(shard.get(c)) for c in columns))
    Console().print(table)
    ingest = stats.get("ingest")
    if ingest:
        keys = ["events_per_s", "applied", "stale", "rejected", "lag", "in_flight"]
        line = ", ".join(f"{k} {ingest[k]}" for k in keys if k in ingest) if "detail" not in ingest else ingest["detail"]
        click.echo(f"ingest: {line}")


def _number(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def _checkout_benchmarks() -> dict[str, Path]:
    """``{short name: path}`` of the benchmarks in a source checkout's bench/ (none when installed)."""
    if not BENCH_DIR.is_dir():
        return {}
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


class _Benchmarks(_Group):
    """``bench store`` measures a running store; every other name runs a benchmark of bench/."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *_checkout_benchmarks()]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        path = _checkout_benchmarks().get(name)
        if path is None:
            return None
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""

        def run_it(args: tuple[str, ...]) -> None:
            sys.exit(subprocess.call([sys.executable, "-m", f"bench.bench_{name}", *args], cwd=BENCH_DIR.parent))
        return click.Command(name, callback=run_it, help=doc, short_help=doc.splitlines()[0] if doc else "",
                             add_help_option=False,  # --help goes to the benchmark itself
                             params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                             context_settings={"ignore_unknown_options": True})


@main.group(cls=_Benchmarks, invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks: ``store`` against a running store at --url, or NAME of a source checkout's bench/
    (each starts its own store on free ports and prints ratios to a reference; ``bench NAME --help``)."""
    if ctx.invoked_subcommand is None:
        for name in ctx.command.list_commands(ctx):
            cmd = ctx.command.get_command(ctx, name)
            click.echo(f"{name:14} {cmd.get_short_help_str(limit=70)}")


@bench.command("store")
@click.option("--seconds", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True, help="per phase")
@click.option("--connections", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="requests in flight")
@click.option("--entity", "entity_ids", multiple=True, metavar="ID",
              help="read these entities (repeatable); default: write fs-bench-N entities, delete them after")
@click.option("--entities", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="entities to write when no --entity is given")
@click.option("--features", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="features per written entity")
@store_options
def bench_store(client: Client, seconds: float, connections: int, entity_ids: tuple[str, ...],
                entities: int, features: int) -> None:
    """Whole-entity GETs against the store at --url, with GET /healthz in the same run as the reference."""
    reads, reference = asyncio.run(loadtest.run(client.url, client.token, list(entity_ids), entities,
                                                features, connections, seconds))
    table = Table(title=f"{client.url}: {connections} connections, {seconds:g} s a phase")
    for col in ["request", "req/s", "p50 ms", "p99 ms", "errors", "vs /healthz"]:
        table.add_column(col, justify="left" if col == "request" else "right")
    for f in (reference, reads):
        ratio = f"{f.rate / reference.rate:.2f}x" if reference.rate else "-"
        table.add_row(f.name, f"{f.rate:,.0f}", f"{f.p50_ms:.3f}", f"{f.p99_ms:.3f}", f"{f.errors:,}", ratio)
    Console().print(table)
    if reads.errors or reference.errors:
        sys.exit(REFUSED)


if __name__ == "__main__":
    main()
