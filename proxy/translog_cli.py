"""Reading the TransactionLog from the command line: ``nocp logs tail``, ``nocp logs stats``
and ``nocp drift``.

The readers open the log read-only and never lock it, so they run beside a live proxy. A
line that does not decode (cut off by a crash) is skipped with a warning on stderr. Rotated
files are read oldest first (``transactions.jsonl.N`` ... ``.1``, then the current file);
``tail -f`` notices rotation (the path now names another file) and truncation, finishes the
old file and carries on with the new one. Output uses ``rich``: colour and tables on a
terminal, plain text without colour or control codes when piped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proxy.cohorts import compare, print_comparison
from proxy.config import Settings, load_settings
from proxy.drift import Alert, DriftDetector
from proxy.exceptions import ConfigError
from proxy.stats import percentile
from proxy.translog import Figures, TransactionLog, figures, log_session_id, saved_share

__all__ = [
    "Follower",
    "GroupStats",
    "add_cli",
    "expand_paths",
    "iter_records",
    "last_records",
    "parse_since",
    "stats",
]

Warn = Callable[[str], None]
_decoder = msgspec.json.Decoder(TransactionLog)
_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")
_OUTCOME_STYLE = {
    "ok": "green",
    "client_error": "yellow",
    "cancelled": "magenta",
    "upstream_error": "red",
    "proxy_error": "bold red",
}


class UsageError(Exception):
    """A bad command-line value; printed without a traceback, exit status 2."""


def _warn_stderr(message: str) -> None:
    print(f"nocp: warning: {message}", file=sys.stderr, flush=True)


def _decode(line: bytes, where: str, warn: Warn) -> TransactionLog | None:
    try:
        return _decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        warn(f"{where}: skipped a line that is not a whole TransactionLog record (cut off by a crash?)")
        return None


# --- which files, in which order ------------------------------------------------------------


def _rotation(path: Path) -> tuple[Path, int]:
    """``(current file, N)`` for ``X.jsonl.N``; ``(X.jsonl, 0)`` for the current file."""
    m = _ROTATED.match(path.name)
    if m is None:
        return path, 0
    return path.with_name(m["base"]), int(m["n"])


def _rotated_siblings(current: Path) -> list[Path]:
    found = []
    for sibling in current.parent.glob(f"{glob_escape(current.name)}.*"):
        base, n = _rotation(sibling)
        if n and base == current:
            found.append(sibling)
    return found


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def expand_paths(paths: Iterable[Path], *, log_file: str = "transactions.jsonl") -> list[Path]:
    """The files to read, oldest first.

    A directory stands for its ``log_file``; a current file (no ``.N`` suffix) brings its
    rotated siblings along; each rotation set is ordered ``.N`` ... ``.1``, current. Sets
    keep the order in which they were first named.
    """
    groups: dict[Path, set[Path]] = {}
    for path in paths:
        if path.is_dir():
            path = path / log_file
        base, n = _rotation(path)
        group = groups.setdefault(base, set())
        group.add(path)
        if n == 0:
            group.update(_rotated_siblings(path))
    ordered: list[Path] = []
    for group in groups.values():
        ordered.extend(sorted(group, key=lambda p: -_rotation(p)[1]))
    return ordered


def iter_records(paths: Iterable[Path], warn: Warn = _warn_stderr) -> Iterator[TransactionLog]:
    """Every record of ``paths`` in order; undecodable lines are skipped with a warning."""
    for path in paths:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            if _rotation(path)[1] == 0:
                warn(f"{path}: no such file")
            continue  # a rotated file may have moved on since we listed it
        with f:
            for number, line in enumerate(f, 1):
                if line.strip() and (rec := _decode(line, f"{path}:{number}", warn)) is not None:
                    yield rec


def last_records(
    path: Path, limit: int, *, since: dt.datetime | None = None, warn: Warn = _warn_stderr
) -> list[TransactionLog]:
    """The last ``limit`` records of the log ``path`` and its rotated files (those at or after
    ``since``), oldest first. Files are read backwards from their end, newest file first, and
    reading stops at ``limit`` records or the first one before ``since``: the cost is bounded by
    what is returned, not by the size of the log. A last line without its newline (still being
    written) is left out."""
    found: list[TransactionLog] = []
    for file in reversed(expand_paths([path])):
        try:
            f = file.open("rb")
        except FileNotFoundError:
            continue  # rotated away since it was listed
        with f:
            for i, (start, line) in enumerate(_lines_backwards(f)):
                if len(found) >= limit:
                    return found[::-1]
                if i == 0 or not line.strip():  # i == 0: what follows the last newline
                    continue
                rec = _decode(line, f"{file} (byte {start})", warn)
                if rec is None:
                    continue
                if since is not None:
                    when = _timestamp(rec)
                    if when is None:  # left out, as ``stats`` leaves it out with a ``since``
                        continue
                    if when < since:
                        return found[::-1]
                found.append(rec)
    return found[::-1]


def _lines_backwards(f: Any, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of binary file ``f``, last line first; the first one yielded is what
    follows the last newline (empty when the file ends with one)."""
    f.seek(0, os.SEEK_END)
    pos = f.tell()
    buf = b""
    while pos > 0:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        buf = f.read(size) + buf
        first, *lines = buf.split(b"\n")
        offsets = []
        start = pos + len(first) + 1
        for line in lines:
            offsets.append(start)
            start += len(line) + 1
        yield from reversed(list(zip(offsets, lines, strict=True)))
        buf = first
    if buf:
        yield 0, buf


# --- following a file through rotation ------------------------------------------------------


class Follower:
    """Complete lines appended to ``path`` since the last :meth:`poll`, across rotation.

    Rotation (``path`` now names another file, or none) is noticed by inode: the old file is
    read to its end first, then every file rotated after it, then the new one from its start.
    The rotated files are opened together and their names checked again afterwards, so a
    rotation while they are being listed cannot make one be skipped or read twice; each is
    then read through its own descriptor, whatever it is renamed to meanwhile. A file that got
    shorter was truncated and is read again from its start. A partial last line is kept until
    its newline arrives; one left at the end of a rotated file was cut off and is reported. A
    follower that falls more than ``backups`` rotations behind reports that lines were lost.
    """

    def __init__(
        self, path: Path, *, offset: int = 0, inode: int | None = None, warn: Warn = _warn_stderr
    ) -> None:
        self.path = path
        self.warn = warn
        self._offset = offset
        self._expect_inode = inode  # ``offset`` is into this file; another one starts at 0
        self._file: Any = None
        self._inode: int | None = None  # the file read last, still open or finished
        self._buf = b""

    def close(self) -> None:
        """Close the file being followed."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_first(self) -> bool:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        offset = self._offset if self._expect_inode in (None, st.st_ino) else 0
        f.seek(min(offset, st.st_size))
        self._file, self._inode = f, st.st_ino
        return True

    def _drain(self) -> list[bytes]:
        data = self._file.read()
        if not data:
            return []
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return lines

    def _cut_off(self) -> None:
        if self._buf:
            self.warn(f"{self.path}: skipped a line cut off at the end of a rotated file")
            self._buf = b""

    def _snapshot(self) -> list[tuple[int, Any, bool]]:
        """``(inode, open file, is the current file)`` of the rotated files and the current one,
        oldest first, as they were at one instant: opened, then the names checked again."""
        while True:
            names = sorted(_rotated_siblings(self.path), key=lambda p: -_rotation(p)[1])
            opened: list[tuple[Path, int, Any]] = []
            for name in [*names, self.path]:
                with contextlib.suppress(FileNotFoundError):
                    f = name.open("rb")
                    opened.append((name, os.fstat(f.fileno()).st_ino, f))
            if self._unchanged(names, opened):
                return [(ino, f, name == self.path) for name, ino, f in opened]
            for _, _, f in opened:
                f.close()

    def _unchanged(self, names: list[Path], opened: list[tuple[Path, int, Any]]) -> bool:
        if set(_rotated_siblings(self.path)) != set(names):
            return False
        try:
            return all(os.stat(name).st_ino == ino for name, ino, _ in opened)
        except FileNotFoundError:
            return False

    def _follow_rotation(self) -> list[bytes]:
        """Read the files rotated after the last one read, then open the current one."""
        chain = self._snapshot()
        inodes = [ino for ino, _, _ in chain]
        if self._inode in inodes:
            start = inodes.index(self._inode) + 1
        else:  # the last file read is gone: deleted, or rotated out of the backups
            start = max(len(chain) - 1, 0)
            if len(chain) > 1:
                self.warn(f"{self.path}: fell behind the log's rotation; lines were lost")
        for _, f, _ in chain[:start]:
            f.close()
        lines: list[bytes] = []
        for ino, f, current in chain[start:]:
            self._file, self._inode = f, ino
            lines += self._drain()
            if not current:
                self._cut_off()
                self.close()
        return lines

    def poll(self) -> list[bytes]:
        """The complete lines written since the last call (possibly none)."""
        if self._file is None and self._inode is None and not self._open_first():
            return []
        lines = self._drain() if self._file is not None else []
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._file is not None and st is not None and st.st_ino == self._inode:
            if st.st_size < self._file.tell():  # truncated in place
                self._buf = b""
                self._file.seek(0)
                lines += self._drain()
            return lines
        if self._file is not None:  # rotated: finish the old file first
            lines += self._drain()
            self._cut_off()
            self.close()
        return lines + self._follow_rotation()


# --- rendering ------------------------------------------------------------------------------


def make_console(file: TextIO | None = None) -> Console:
    """A console for ``file`` (stdout): colour on a terminal; plain and unwrapped when piped."""
    console = Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(
            file=file or sys.stdout, highlight=False, color_system=None, width=10_000, emoji=False
        )
    return console


def _print_wide(console: Console, table: Table) -> None:
    """Print ``table`` at its natural width: on a narrow terminal its lines wrap, but no figure is
    cut short with an ellipsis."""
    width = console.measure(table, options=console.options.update_width(100_000)).maximum
    if width > console.width:
        console = Console(
            file=console.file,
            width=width,
            highlight=False,
            force_terminal=console.is_terminal,
            color_system=console.color_system,  # type: ignore[arg-type]
        )
    console.print(table)


def _short_time(ts: str) -> str:
    return ts.replace("T", " ")[:19]


def _int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _saved(f: Figures) -> str:
    """Net tokens saved and their share of the raw prompt; ``-`` for a request that does not
    count for savings (it did not complete)."""
    if not f.counts_for_savings:
        return f"{'-':>9} {'-':>6}"
    share = "-" if f.saved_share is None else f"{f.saved_share:.1%}"
    return f"{f.net_saved_tokens:>9,} {share:>6}"


def tail_line(rec: TransactionLog) -> Text:
    """One request as one readable line: time, model, tokens raw -> sent, net tokens saved and
    their share, tokens billed, retrieval rounds, latency, outcome."""
    f = figures(rec)
    outcome = rec.outcome if rec.outcome == "ok" else f"{rec.outcome} {rec.status}"
    text = Text()
    text.append(_short_time(rec.timestamp), style="dim")
    text.append(f"  {rec.model or '-':<24} ", style="bold")
    text.append(f"{_int(rec.raw_input_tokens):>9} -> {_int(rec.optimized_input_tokens):<9}")
    text.append(
        f" saved {_saved(f)}", style="red" if f.counts_for_savings and f.net_saved_tokens < 0 else "cyan"
    )
    text.append(f" billed {_int(f.billed_tokens):>9} rounds {f.retrieval_rounds}")
    text.append(f" {rec.total_latency_ms:>9.1f} ms  ")
    text.append(outcome, style=_OUTCOME_STYLE.get(rec.outcome, ""))
    if rec.stream:
        text.append("  stream", style="dim")
    if rec.session_id:
        text.append(f"  session={rec.session_id}", style="dim")
    if rec.fail_open:
        text.append("  fail-open=" + ",".join(f.stage for f in rec.fail_open), style="yellow")
    return text


# --- stats ----------------------------------------------------------------------------------


@dataclass
class GroupStats:
    """Totals of one group of records. Requests, errors, fail-opens and retrieval rounds count
    every record; tokens, cost and latencies only the successful ones (``counts_for_savings``),
    as drift detection and ``/metrics`` do."""

    key: str
    requests: int = 0
    errors: int = 0
    fail_opens: int = 0
    retrieval_rounds: int = 0
    retrieval_requests: int = 0  # requests that took at least one retrieval round
    raw_input_tokens: int = 0
    sent_input_tokens: int = 0
    gross_saved_tokens: int = 0
    overhead_tokens: int = 0
    retrieval_overhead_tokens: int = 0
    tokens_saved: int = 0  # net
    billed_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    baseline_cached_tokens: int = 0  # estimated for the raw prompts (records that have it)
    baseline_raw_tokens: int = 0  # the raw prompts of those records
    cost_usd: float | None = None
    cost_savings_usd: float | None = None
    same_share_savings_usd: float | None = None  # the earlier estimate (same cached share)
    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)

    def add(self, rec: TransactionLog) -> None:
        """Account for one record."""
        f = figures(rec)
        self.requests += 1
        self.errors += f.error
        self.fail_opens += bool(rec.fail_open)
        self.retrieval_rounds += f.retrieval_rounds
        self.retrieval_requests += f.retrieval_rounds > 0
        if not f.counts_for_savings:
            return
        self.raw_input_tokens += f.raw_input_tokens
        self.sent_input_tokens += f.sent_input_tokens
        self.gross_saved_tokens += f.gross_saved_tokens
        self.overhead_tokens += f.overhead_tokens
        self.retrieval_overhead_tokens += f.retrieval_overhead_tokens
        self.tokens_saved += f.net_saved_tokens
        self.billed_tokens += f.billed_tokens or 0
        self.prompt_tokens += rec.prompt_tokens or 0
        self.cached_tokens += rec.cached_tokens or 0
        if rec.estimated_cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + rec.estimated_cost_usd
        if f.baseline_cached_tokens is not None:
            self.baseline_cached_tokens += f.baseline_cached_tokens
            self.baseline_raw_tokens += f.raw_input_tokens
        if f.cost_savings_usd is not None:
            self.cost_savings_usd = (self.cost_savings_usd or 0.0) + f.cost_savings_usd
        if f.same_share_savings_usd is not None:
            self.same_share_savings_usd = (self.same_share_savings_usd or 0.0) + f.same_share_savings_usd
        self.latencies_ms.append(rec.total_latency_ms)
        self.overheads_ms.append(rec.proxy_overhead_ms)

    def summary(self) -> dict[str, Any]:
        """The figures shown and printed by ``--json``."""
        n = self.requests
        return {
            "key": self.key,
            "requests": n,
            "errors": self.errors,
            "error_rate": self.errors / n if n else 0.0,
            "fail_opens": self.fail_opens,
            "fail_open_rate": self.fail_opens / n if n else 0.0,
            "retrieval_rounds": self.retrieval_rounds,
            "retrieval_rate": self.retrieval_requests / n if n else 0.0,
            "raw_input_tokens": self.raw_input_tokens,
            "sent_input_tokens": self.sent_input_tokens,
            "gross_saved_tokens": self.gross_saved_tokens,
            "overhead_tokens": self.overhead_tokens,
            "retrieval_overhead_tokens": self.retrieval_overhead_tokens,
            "tokens_saved": self.tokens_saved,
            "saved_share": saved_share(self.tokens_saved, self.raw_input_tokens) or 0.0,
            "billed_tokens": self.billed_tokens,
            "cache_hit_share": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None,
            "baseline_cached_tokens": self.baseline_cached_tokens,
            "baseline_cache_hit_share": (
                self.baseline_cached_tokens / self.baseline_raw_tokens if self.baseline_raw_tokens else None
            ),
            "cost_usd": self.cost_usd,
            "cost_savings_usd": self.cost_savings_usd,
            "cost_savings_same_share_usd": self.same_share_savings_usd,
            "latency_p50_ms": percentile(self.latencies_ms, 50),
            "latency_p95_ms": percentile(self.latencies_ms, 95),
            "overhead_p50_ms": percentile(self.overheads_ms, 50),
            "overhead_p95_ms": percentile(self.overheads_ms, 95),
        }


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30m``, ``1h``, ``2d``, ``1w`` ago, or an ISO date / time (UTC unless it says)."""
    now = now or dt.datetime.now(dt.UTC)
    m = _DURATION.match(text)
    if m:
        return now - dt.timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: expected e.g. 30m, 1h, 2d or an ISO time, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _timestamp(rec: TransactionLog) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(rec.timestamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _group_key(rec: TransactionLog, by: str | None) -> str:
    if by == "model":
        return rec.model or "(none)"
    if by == "session":
        return rec.session_id or "(none)"
    if by == "day":
        return rec.timestamp[:10]
    if by == "cohort":
        return rec.cohort or "(none)"
    return "all"


def stats(
    records: Iterable[TransactionLog], *, by: str | None = None, since: dt.datetime | None = None
) -> tuple[list[GroupStats], GroupStats]:
    """Per-group and overall totals of ``records`` (those at or after ``since``)."""
    groups: dict[str, GroupStats] = {}
    total = GroupStats(key="total")
    for rec in records:
        if since is not None:
            when = _timestamp(rec)
            if when is None or when < since:
                continue
        key = _group_key(rec, by)
        group = groups.get(key)
        if group is None:
            group = groups[key] = GroupStats(key=key)
        group.add(rec)
        total.add(rec)
    ordered = sorted(groups.values(), key=lambda g: g.key if by == "day" else (-g.requests, g.key))
    return ordered, total


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"{x:,.4f}"


def _stats_table(groups: list[GroupStats], total: GroupStats, by: str | None, console: Console) -> Table:
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, show_edge=False, pad_edge=False)
    table.add_column(by or "", style="bold")
    for name in ("requests", "errors", "fail-open", "raw tokens", "sent tokens", "gross saved",
                 "overhead tokens", "net saved", "saved %", "rounds", "billed tokens", "cache hit",
                 "raw cache hit", "cost $", "est. saved $", "est. saved $ same-share (old)", "p50 ms",
                 "p95 ms", "overhead p50 ms"):  # fmt: skip
        table.add_column(name, justify="right")
    rows = [*groups, total] if by else [total]
    for i, group in enumerate(rows):
        s = group.summary()
        table.add_row(
            s["key"],
            f"{s['requests']:,}",
            _pct(s["error_rate"]),
            _pct(s["fail_open_rate"]),
            f"{s['raw_input_tokens']:,}",
            f"{s['sent_input_tokens']:,}",
            f"{s['gross_saved_tokens']:,}",
            f"{s['overhead_tokens']:,}",
            Text(f"{s['tokens_saved']:,}", style="red" if s["tokens_saved"] < 0 else ""),
            _pct(s["saved_share"]),
            f"{s['retrieval_rounds']:,}",
            f"{s['billed_tokens']:,}",
            _pct(s["cache_hit_share"]),
            _pct(s["baseline_cache_hit_share"]),
            _usd(s["cost_usd"]),
            _usd(s["cost_savings_usd"]),
            _usd(s["cost_savings_same_share_usd"]),
            _ms(s["latency_p50_ms"]),
            _ms(s["latency_p95_ms"]),
            _ms(s["overhead_p50_ms"]),
            end_section=by is not None and i == len(rows) - 2,
        )
    return table


# --- commands -------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _default_paths(args: argparse.Namespace) -> list[Path]:
    if args.paths:
        return [Path(p) for p in args.paths]
    return [_settings(args).log.path]


def _matches(rec: TransactionLog, args: argparse.Namespace) -> bool:
    if args.session is not None and rec.session_id not in (args.session, log_session_id(args.session)):
        return False
    return args.model is None or fnmatch.fnmatchcase(rec.model or "", args.model)


def _write_line(console: Console, rec: TransactionLog, raw: bytes, as_json: bool) -> None:
    if as_json:
        console.file.write(raw.decode("utf-8", "replace").rstrip("\n") + "\n")
    else:
        console.print(tail_line(rec), soft_wrap=True)


def cmd_tail(args: argparse.Namespace) -> int:
    """``nocp logs tail``: the last ``-n`` matching requests, then (``-f``) new ones as they come."""
    path = Path(args.path) if args.path else _settings(args).log.path
    if path.is_dir():
        path = path / _settings(args).log.file
    console = make_console()
    last: deque[tuple[TransactionLog, bytes]] = deque(maxlen=max(0, args.lines))
    offset, inode = 0, None
    if path.exists():
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            size = offset = st.st_size
            inode = st.st_ino
            for start, line in _lines_backwards(f):
                if start + len(line) == size and line and args.follow:
                    offset = start  # no newline yet: the follower takes it when it arrives
                    continue
                if not line.strip():
                    continue
                if len(last) == last.maxlen:
                    break
                rec = _decode(line, f"{path} (byte {start})", _warn_stderr)
                if rec is not None and _matches(rec, args):
                    last.appendleft((rec, line))
    elif not args.follow:
        _warn_stderr(f"{path}: no such file")
        return 1
    for rec, raw in last:
        _write_line(console, rec, raw, args.json)
    console.file.flush()
    if not args.follow:
        return 0
    follower = Follower(path, offset=offset, inode=inode)
    try:
        while True:
            lines = follower.poll()
            for line in lines:
                rec = _decode(line, str(path), _warn_stderr) if line.strip() else None
                if rec is not None and _matches(rec, args):
                    _write_line(console, rec, line, args.json)
            if lines:
                console.file.flush()
            else:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        follower.close()


def cmd_stats(args: argparse.Namespace) -> int:
    """``nocp logs stats``: totals and percentiles, overall or by model / session / day."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    log_file = "transactions.jsonl" if args.paths else _settings(args).log.file
    paths = expand_paths(_default_paths(args), log_file=log_file)
    records: Iterable[TransactionLog] = iter_records(paths)
    cohorts: dict[str, Any] | None = None
    if args.by == "cohort":  # read once, for the totals and the comparison
        records = [
            r for r in records if since is None or ((when := _timestamp(r)) is not None and when >= since)
        ]
        cohorts = compare(records)
    groups, total = stats(records, by=args.by, since=since)
    if args.json:
        out = {
            "since": since.isoformat() if since else None,
            "by": args.by,
            "groups": [g.summary() for g in groups] if args.by else [],
            "total": total.summary(),
        }
        if cohorts is not None:
            out["cohorts"] = cohorts
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
        return 0
    console = make_console()
    if not total.requests:
        console.print("no requests" + (f" since {since.isoformat()}" if since else ""))
        return 0
    _print_wide(console, _stats_table(groups, total, args.by, console))
    if cohorts is not None:
        print_comparison(console, cohorts)
    return 0


def _alert_table(alerts: list[Alert], console: Console) -> Table:
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, show_edge=False, pad_edge=False)
    for name in ("time", "model", "kind", "severity", "state", "previous", "recent", "message"):
        table.add_column(name, overflow="fold")
    for a in alerts:
        style = "red" if a.severity == "critical" else "yellow"
        table.add_row(
            _short_time(a.timestamp),
            a.model or "(all)",
            a.kind,
            Text(a.severity, style=style if a.state == "firing" else "dim"),
            a.state,
            f"{a.previous:.4g}",
            f"{a.recent:.4g}",
            a.message,
        )
    return table


def cmd_drift(args: argparse.Namespace) -> int:
    """``nocp drift PATH...``: replay logs through the drift detector, print what it raises."""
    settings = _settings(args)
    config = settings.drift
    if args.window:
        config = msgspec.structs.replace(config, window=args.window)
    paths = expand_paths(_default_paths(args), log_file=settings.log.file)
    detector = DriftDetector(config)
    alerts = [alert for rec in iter_records(paths) for alert in detector.observe(rec)]
    if args.json:
        encoder = msgspec.json.Encoder()
        for alert in alerts:
            sys.stdout.write(encoder.encode(alert).decode() + "\n")
        return 0
    console = make_console()
    firing = [a for a in alerts if a.state == "firing"]
    if alerts:
        console.print(_alert_table(alerts, console))
    console.print(
        f"{len(firing)} alert(s) ({sum(a.severity == 'critical' for a in firing)} critical) over "
        f"{detector.records:,} requests in {len(paths)} file(s), window {config.window}"
    )
    return 0


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Config errors exit 2 with a message; a closed pipe (``| head``) ends quietly."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ConfigError, UsageError) as exc:
            print(f"nocp: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return run


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_cli(sub: Any) -> None:
    """Add ``logs tail``, ``logs stats`` and ``drift`` to the ``nocp`` subcommands ``sub``."""
    logs = sub.add_parser("logs", help="read the transaction log")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True)

    tail = logs_sub.add_parser("tail", help="one readable line per request; -f to follow")
    tail.add_argument("path", nargs="?", metavar="PATH", help="log file (default: from settings)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep following, across rotation")
    tail.add_argument("-n", "--lines", type=int, default=20, help="requests shown first (default 20)")
    tail.add_argument("--session", help="only this session id (as the client sent it, or as logged)")
    tail.add_argument("--model", help="only this model (glob, e.g. 'gpt-4o*')")
    tail.add_argument("--json", action="store_true", help="print the matching JSON lines as they are")
    tail.add_argument("--interval", type=float, default=0.25, help=argparse.SUPPRESS)
    tail.add_argument("--config", help="YAML config file (default: $NOCP_CONFIG)")
    tail.set_defaults(func=_guard(cmd_tail))

    st = logs_sub.add_parser("stats", help="totals and percentiles, as a table or --json")
    st.add_argument("paths", nargs="*", metavar="PATH", help="log files or dirs (rotated ones included)")
    st.add_argument("--since", help="only requests since: 30m, 1h, 2d, 1w or an ISO time")
    st.add_argument(
        "--by",
        choices=("model", "session", "day", "cohort"),
        help="one row per group (cohort: and the holdout experiment's measured saving)",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--config", help="YAML config file (default: $NOCP_CONFIG)")
    st.set_defaults(func=_guard(cmd_stats))

    drift = sub.add_parser("drift", help="replay transaction logs through the drift detector")
    drift.add_argument("paths", nargs="*", metavar="PATH", help="log files or dirs (rotated ones included)")
    drift.add_argument("--window", type=_positive, help="records per window (default: drift.window)")
    drift.add_argument("--json", action="store_true", help="one JSON alert per line")
    drift.add_argument("--config", help="YAML config file (default: $NOCP_CONFIG)")
    drift.set_defaults(func=_guard(cmd_drift))
