"""``nocp top``: a live terminal view of the proxy, refreshed every ``--interval`` seconds.

It shows requests per second, the net tokens and dollars saved (estimates), the measured saving
when a holdout cohort exists, cache hit share, retrieval and error rates, latency percentiles,
the open drift alerts and the top tools. The figures come from the same stats JSON as the
dashboard (:func:`proxy.dashboard.snapshot`), built either here from the transaction log
(the last ``--limit`` records, then following the file across rotation, with the drift
detector replaying them for the alerts) or fetched from a running proxy's
``GET /v1/nocp/stats`` (``--url``; the admin key from ``$NOCP_ADMIN_KEY``). ``--once`` prints
one frame and exits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from proxy.config import load_settings
from proxy.dashboard import DEFAULT_RECORDS, MAX_RECORDS, snapshot
from proxy.drift import DriftDetector
from proxy.exceptions import ConfigError
from proxy.translog import TransactionLog
from proxy.translog_cli import Follower, last_records, make_console

__all__ = ["ADMIN_KEY_ENV", "LogSource", "UrlSource", "add_cli", "frame"]

ADMIN_KEY_ENV = "NOCP_ADMIN_KEY"
_MAX_RESPONSE = 64 * 1024 * 1024
_decoder = msgspec.json.Decoder(TransactionLog)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} ms"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.4f}"


def _int(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _measured(snap: dict[str, Any]) -> str:
    cohorts = snap.get("cohorts")
    measured = cohorts.get("measured") if cohorts else None
    if not measured:
        return "- (needs a holdout cohort)" if not cohorts else "- (not enough data yet)"
    text = _pct(measured.get("saving_share"))
    if measured.get("ci_low") is not None:
        text += f" (95% CI {_pct(measured['ci_low'])} to {_pct(measured.get('ci_high'))})"
    if measured.get("conclusive") is False:
        text += " sample too small to conclude"
    return text


def _figures(snap: dict[str, Any]) -> Table:
    t = snap["total"]
    rate = snap["rate"]
    grid = Table.grid(padding=(0, 3))
    for _ in range(4):
        grid.add_column(style="dim")
        grid.add_column(justify="right", style="bold")
    grid.add_row(
        "requests", _int(t["requests"]),
        f"req/s ({rate['window_s']:g} s)", f"{rate['requests_per_s']:.2f}",
        "sessions", _int(snap["sessions"]),
        "errors", _pct(t["error_rate"]),
    )  # fmt: skip
    grid.add_row(
        "saved tokens (estimate)", _int(t["tokens_saved"]),
        "saved share (estimate)", _pct(t["saved_share"]),
        "cost", _usd(t["cost_usd"]),
        "cost saved (estimate)", _usd(t["cost_savings_usd"]),
    )  # fmt: skip
    grid.add_row(
        "cache hit share", _pct(t["cache_hit_share"]),
        "retrieval rate", _pct(t["retrieval_rate"]),
        "latency p50", _ms(t["latency_p50_ms"]),
        "latency p95", _ms(t["latency_p95_ms"]),
    )  # fmt: skip
    return grid


def _alerts(snap: dict[str, Any]) -> RenderableType:
    alerts = snap["alerts"]
    if not alerts:
        return Text("alerts: none open", style="green")
    table = Table(title="open drift alerts", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("since", "model", "kind", "severity", "message"):
        table.add_column(name, overflow="fold")
    for a in alerts:
        style = "red" if a["severity"] == "critical" else "yellow"
        table.add_row(
            str(a["timestamp"]).replace("T", " ")[:19],
            a["model"] or "(all)",
            a["kind"],
            Text(a["severity"], style=style),
            a["message"],
        )
    return table


def _tools(snap: dict[str, Any]) -> RenderableType:
    rows = snap["tools"]["by_saving"]
    table = Table(title="top tools by saving (estimate)", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("tool", "outputs", "tokens", "saved", "saved %", "retrievals"):
        table.add_column(name, justify="left" if name == "tool" else "right", overflow="fold")
    for r in rows[:5]:
        table.add_row(
            r["tool"], _int(r["outputs"]), _int(r["tokens"]), _int(r["saved_tokens"]),
            _pct(r["saved_share"]), _int(r["retrievals"]),
        )  # fmt: skip
    return table


def _cohorts(snap: dict[str, Any]) -> RenderableType | None:
    cohorts = snap.get("cohorts")
    if not cohorts:
        return None
    table = Table(title="cohorts (measured)", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("cohort", "sessions", "requests", "billed tokens", "cost", "error rate"):
        table.add_column(name, justify="left" if name == "cohort" else "right")
    for g in cohorts.get("groups") or ():
        table.add_row(
            str(g.get("key")), _int(g.get("sessions")), _int(g.get("requests")),
            _int(g.get("billed_tokens")), _usd(g.get("cost_usd")), _pct(g.get("error_rate")),
        )  # fmt: skip
    return table


def frame(snap: dict[str, Any], source: str) -> Group:
    """One screen of ``nocp top`` for the stats JSON ``snap``."""
    window = snap["window"]
    head = Text()
    head.append("nocp top", style="bold")
    head.append(f"  {source}  ", style="dim")
    updated = snap["generated_at"].replace("T", " ").replace("Z", " UTC")
    head.append(f"{window['records']:,} requests read, updated {updated}")
    parts: list[RenderableType] = [head, _figures(snap), Text(f"measured saving: {_measured(snap)}")]
    parts.append(_alerts(snap))
    cohorts = _cohorts(snap)
    if cohorts is not None:
        parts.append(cohorts)
    parts.append(_tools(snap))
    parts += [Text(f"warning: {w}", style="yellow") for w in snap.get("warnings", ())]
    return Group(*parts)


# --- where the figures come from ----------------------------------------------------------------


class LogSource:
    """The stats of the last ``limit`` records of the log at ``path``, kept current by following
    it (across rotation) and replaying every record through a drift detector for the alerts."""

    def __init__(self, path: Path, *, limit: int, detector: DriftDetector, rate_window_s: float) -> None:
        self.path = path
        self.limit = limit
        self.detector = detector
        self.rate_window_s = rate_window_s
        self.warnings: deque[str] = deque(maxlen=3)  # shown under the frame
        try:
            st = path.stat()
            offset, inode = st.st_size, st.st_ino
        except FileNotFoundError:
            offset, inode = 0, None
        initial = last_records(path, limit, warn=self._warn)
        self.records: deque[TransactionLog] = deque(initial, maxlen=limit)
        for rec in initial:
            self.detector.observe(rec)
        self._initial = {rec.transaction_id for rec in initial}  # lines appended while reading
        self._follower = Follower(path, offset=offset, inode=inode, warn=self._warn)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def close(self) -> None:
        """Stop following the log."""
        self._follower.close()

    def poll(self) -> dict[str, Any]:
        """Take in what was appended since the last call; the stats now."""
        for line in self._follower.poll():
            if not line.strip():
                continue
            try:
                rec = _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._warn(f"{self.path}: skipped a line that is not a whole record")
                continue
            if rec.transaction_id in self._initial:
                continue
            self.records.append(rec)
            self.detector.observe(rec)
        self._initial.clear()
        alerts = [msgspec.to_builtins(a) for a in self.detector.active()]
        now = dt.datetime.now(dt.UTC)
        records = list(self.records)
        snap = snapshot(records, now=now, alerts=alerts, limit=self.limit, rate_window_s=self.rate_window_s)
        snap["warnings"] = list(self.warnings)
        return snap


class UrlSource:
    """The stats JSON of a running proxy (``GET URL/v1/nocp/stats``), with the admin key."""

    def __init__(self, url: str, *, key: str | None, limit: int, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise OSError(f"--url: expected http:// or https://, got {url!r}")
        self.url = url.rstrip("/") + f"/v1/nocp/stats?limit={limit}"
        self.key = key
        self.timeout_s = timeout_s

    def poll(self) -> dict[str, Any]:
        """Fetch the stats now; raises ``OSError`` with a readable message when that fails."""
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body: dict[str, Any] = json.loads(resp.read(_MAX_RESPONSE))
                return body
        except urllib.error.HTTPError as exc:
            hint = f" (set ${ADMIN_KEY_ENV} to the admin key)" if exc.code == 401 else ""
            raise OSError(f"{self.url}: HTTP {exc.code}{hint}") from None
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise OSError(f"{self.url}: {getattr(exc, 'reason', exc)}") from None

    def close(self) -> None:
        """Nothing to release."""


def cmd_top(args: argparse.Namespace) -> int:
    """``nocp top``: one frame (``--once``) or a live view until Ctrl-C."""
    source: LogSource | UrlSource
    if args.url:
        try:
            source = UrlSource(args.url, key=os.environ.get(ADMIN_KEY_ENV), limit=args.limit)
        except OSError as exc:
            print(f"nocp: {exc}", file=sys.stderr)
            return 2
        name = args.url
    else:
        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            print(f"nocp: {exc}", file=sys.stderr)
            return 2
        path = Path(args.path) if args.path else settings.log.path
        if path.is_dir():
            path = path / settings.log.file
        detector = DriftDetector(settings.drift)
        source = LogSource(path, limit=args.limit, detector=detector, rate_window_s=args.window)
        name = str(path)
    console = make_console()
    try:
        if args.once:
            console.print(frame(source.poll(), name))
            return 0
        return _live(console, source.poll, name, args.interval)
    except OSError as exc:
        print(f"nocp: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()


def _live(console: Console, poll: Callable[[], dict[str, Any]], name: str, interval: float) -> int:
    try:
        with Live(frame(poll(), name), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                try:
                    live.update(frame(poll(), name), refresh=True)
                except OSError as exc:  # the proxy went away: say so, keep trying
                    live.update(Text(f"nocp top  {name}: {exc}", style="red"), refresh=True)
    except KeyboardInterrupt:
        return 0


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_RECORDS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RECORDS}, got {value}")
    return value


def add_cli(sub: Any) -> None:
    """Add ``top`` to the ``nocp`` subcommands ``sub``."""
    top = sub.add_parser("top", help="live terminal view: req/s, savings, cache, latency, alerts")
    top.add_argument("path", nargs="?", metavar="PATH", help="log file or dir (default: from settings)")
    top.add_argument("--url", help=f"a running proxy's admin URL instead (admin key from ${ADMIN_KEY_ENV})")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    top.add_argument("--window", type=float, default=10.0, help="seconds over which req/s is counted")
    top.add_argument(
        "--limit", type=_limit, default=DEFAULT_RECORDS, help="latest requests counted (default 10,000)"
    )
    top.add_argument("--config", help="YAML config file (default: $NOCP_CONFIG)")
    top.set_defaults(func=cmd_top)
