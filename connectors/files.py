"""File-drop connector (system ``files``): CSV and Parquet files in an inbox folder; the
distributor / offline channel. Orders in, fulfilment confirmations out.

cfg::

    system: files
    base_url: file:///srv/drop/acme/inbox        # or a plain absolute path
    lookback_seconds: 600                        # overlap window on file mtimes (default 600)
    options:
      pattern: ["*.csv", "*.parquet"]            # orders files in the inbox (case-insensitive)
      columns: {order_no: "Order No", qty: "Qty"}  # canonical name -> file column (partial ok)
      csv: {delimiter: ",", encoding: "utf-8", block_size: 1048576}
      batch_rows: 5000                           # rows per page (an order is never split)
      outbound: ../outbound                      # confirmations; default <inbox>/../outbound
      quarantine: quarantine                     # bad files; default <inbox>/quarantine
      settle_seconds: 0                          # >0: leave files modified this recently
      customers: {folder: customers, pattern: [...], columns: {...}}   # optional streams,
      stock: {folder: stock}                                           # each in its own folder

Relative ``outbound``/``quarantine``/``folder`` paths are relative to the inbox. Files whose name
starts with "." are never read, so senders can upload ``.name.csv`` and rename when done.

Layout (``orders``): one row per order line, consecutive rows of one order, columns
``order_no, customer_code, customer_email, ordered_at, currency, ship_region, line_no, sku, qty,
unit_price, updated_at`` (+ optional ``total``). Required: ``order_no, sku, qty, unit_price``;
a missing optional column reads as None (``line_no`` defaults to the row's position in its order,
``total`` to the sum of qty x unit_price). ``customers``: ``code`` (required), ``name, email,
region, customer_group, credit_limit, currency, updated_at``. ``stock``: ``sku, warehouse, qty``
(required), ``region, updated_at``.

Reading: pyarrow in batches — ``pyarrow.csv.open_csv`` with every column read as a string (money
never passes through float), ``ParquetFile.iter_batches`` for Parquet (decimal columns arrive as
Decimal). A Parquet money/quantity column of a float type makes the file bad: the value was
already rounded by whoever wrote it, and invariant 5 forbids guessing it back. Consecutive rows
of one ``order_no`` become one RawRecord (payload ``{"file", "file_mtime", "order_no", "lines"}``)
and a page never splits an order (the trailing order of a batch waits for the next batch).
``external_id`` is the ``order_no``, so a re-sent file updates the same orders; ``updated_at`` is
the latest row ``updated_at``, else the file's mtime.

Cursor: ``Cursor(file mtime ISO UTC, file name)``. Files are taken in (mtime, name) order; with a
cursor, only files with mtime >= cursor - lookback are opened (the overlap is re-read: at-least-
once, and the warehouse's upserts make it exactly-once). Each page carries the position of the
last file fully emitted, so a crash mid-file re-reads that file; pages never span two files.
A manifest ``<inbox>/.orderhub/processed.json`` (per stream: name -> size, mtime_ns, sha256),
written after a file is fully emitted, covers what the mtime cursor cannot see: a file older than
the window that is new to the manifest (copied in with its old mtime) or whose content changed is
read again; an unchanged one is skipped on size and mtime alone, without opening it. Such a file
read behind the cursor cannot move the cursor, so its entry only counts once a later cursor comes
back (until then it is read again: a crash before the commit must not lose it). The manifest
never skips a file inside the window: the cursor, committed with the rows, is the authority.

Files still being written: a file whose size or mtime changes while it is read is not completed
(its last order is held back, the cursor stays before it) and it and every later file wait for
the next run. Senders should upload under a dot-name (never read) and rename; ``settle_seconds``
also leaves files modified in the last N seconds alone. One reader per inbox at a time.

Bad files (unreadable, wrong encoding, missing required columns, ragged rows, an order split into
non-consecutive rows, float money in Parquet) are checked in a validating pass before any of
their rows is emitted (no half-read file reaches the warehouse), then moved to the quarantine
folder with ``<name>.reason.txt``; ``quarantined_files`` lists them for the run summary. A row
that merely cannot be parsed (qty "two") is not a bad file: its order is rejected by the mapper.

Push ``fulfilment``: one ``confirmations-<sha1 of sorted keys>[:12].csv`` per call in the
outbound folder (columns ``order_no, status, key, confirmed_at``), written atomically (tmp +
rename). A key already confirmed (in that file, or in any confirmation file with ``recover``) is
not written again; ``count_confirmations(folder)`` counts rows per key (tests, the fake).
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.base import (
    Connector,
    Cursor,
    MappingError,
    Page,
    PushResult,
    RawRecord,
    cursor_key,
    later,
    parse_datetime,
    parse_decimal,
    parse_text,
    to_iso,
)
from connectors.http import SourceError

log = logging.getLogger(__name__)

MANIFEST = Path(".orderhub") / "processed.json"
CONFIRMATION_COLUMNS = ("order_no", "status", "key", "confirmed_at")
CONFIRMED_STATUS = "fulfilled"
PARQUET_SUFFIXES = (".parquet", ".pq")
OPTION_KEYS = {"pattern", "columns", "csv", "batch_rows", "outbound", "quarantine",
               "settle_seconds", "orders", "customers", "stock"}
STREAM_OPTION_KEYS = {"folder", "pattern", "columns"}
CSV_OPTION_KEYS = {"delimiter", "encoding", "block_size"}
# Errors that mean "this file cannot be read as the layout says" (ArrowInvalid is a ValueError).
_FILE_ERRORS = (pa.ArrowException, ValueError, OSError, UnicodeError)


# ------------------------------------------------------------------------------------ mapping



def _head(rows: list[dict], name: str, parse: Callable[[Any, str], Any] | None = None) -> Any:
    """An order-level value repeated on each line: blanks are ignored, disagreement rejects."""
    values: dict[Any, Any] = {}
    for row in rows:
        raw = row.get(name)
        if parse_text(raw) is None:
            continue
        value = parse(raw, name) if parse else parse_text(raw)
        values.setdefault(value, raw)
    if len(values) > 1:
        shown = ", ".join(repr(str(v)) for v in list(values.values())[:3])
        raise MappingError(f"{name}: the lines of one order disagree ({shown})")
    return next(iter(values), None)


def _line_no(value: Any, default: int, where: str) -> int:
    if parse_text(value) is None:
        return default
    number = parse_decimal(value, where)
    if number is None or number != number.to_integral_value() or number < 1:
        raise MappingError(f"{where}: not a positive whole number: {value!r}")
    return int(number)


def _updated(rows: list[dict], payload: dict) -> datetime:
    """The latest row ``updated_at``, else the file's mtime (a file has no other clock)."""
    stamps = [parse_datetime(r.get("updated_at"), "updated_at") for r in rows]
    found = [s for s in stamps if s is not None]
    if found:
        return max(found)
    mtime = parse_datetime(payload.get("file_mtime"), "file_mtime")
    if mtime is None:
        raise MappingError("updated_at: missing, and the file's mtime is unknown")
    return mtime


def map_order(payload: dict) -> dict:
    """A group of order-line rows -> canonical ``orders`` record (docs/internals.md)."""
    rows = payload.get("lines") or []
    order_no = parse_text(payload.get("order_no"))
    if not order_no:
        where = f"row {rows[0].get('_row')}" if rows else "a row"
        raise MappingError(f"order_no: missing ({payload.get('file')}, {where})")
    lines, seen = [], set()
    for n, row in enumerate(rows, start=1):
        at = f" (row {row.get('_row')})"  # the data row in the file, for whoever fixes it
        line_no = _line_no(row.get("line_no"), n, f"lines[{n}].line_no{at}")
        if line_no in seen:
            raise MappingError(f"lines[{n}].line_no{at}: {line_no} appears twice in the order")
        seen.add(line_no)
        lines.append({
            "line_no": line_no,
            "sku": parse_text(row.get("sku")),
            "qty": parse_decimal(row.get("qty"), f"lines[{n}].qty{at}"),
            "unit_price": parse_decimal(row.get("unit_price"), f"lines[{n}].unit_price{at}"),
        })
    total = _head(rows, "total", parse_decimal)
    if total is None and lines and all(li["qty"] is not None and li["unit_price"] is not None
                                       for li in lines):
        # A line-level file states its total implicitly: the sum of its lines.
        total = sum((li["qty"] * li["unit_price"] for li in lines), Decimal(0))
    return {
        "external_id": order_no,
        "order_no": order_no,
        "customer_code": _head(rows, "customer_code"),
        "customer_email": _head(rows, "customer_email"),
        "ordered_at": _head(rows, "ordered_at", parse_datetime),
        "updated_at": _updated(rows, payload),
        "currency": _head(rows, "currency"),
        "total": total,
        "ship_region": _head(rows, "ship_region"),
        "lines": lines,
    }


def map_customer(payload: dict) -> dict:
    row = payload.get("row") or {}
    code = parse_text(row.get("code"))
    if not code:
        raise MappingError(f"code: missing ({payload.get('file')}, row {row.get('_row')})")
    return {
        "external_id": code,
        "code": code,
        "name": parse_text(row.get("name")),
        "email": parse_text(row.get("email")),
        "region": parse_text(row.get("region")),
        "customer_group": parse_text(row.get("customer_group")),
        "credit_limit": parse_decimal(row.get("credit_limit"), "credit_limit"),
        "currency": parse_text(row.get("currency")),
        "updated_at": _updated([row], payload),
    }


def map_stock(payload: dict) -> dict:
    row = payload.get("row") or {}
    sku, warehouse = parse_text(row.get("sku")), parse_text(row.get("warehouse"))
    if not sku or not warehouse:
        raise MappingError(f"sku/warehouse: missing ({payload.get('file')}, row {row.get('_row')})")
    qty = parse_decimal(row.get("qty"), "qty")
    if qty is None:
        raise MappingError("qty: missing")
    return {
        "external_id": f"{sku}@{warehouse}",
        "sku": sku,
        "warehouse": warehouse,
        "region": parse_text(row.get("region")),
        "qty": qty,
        "updated_at": _updated([row], payload),
    }


# ------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class FileStream:
    """One stream's file layout: canonical columns, what is required, how rows become records."""

    kind: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    numeric: tuple[str, ...]  # money/quantities: never a float column
    mapper: Callable[[dict], dict]
    group_by: str | None = None  # orders: consecutive rows of one order_no -> one record
    key: Callable[[dict], str | None] = lambda row: None  # external_id of a one-row record
    folder: str = ""  # default folder, relative to the inbox


ORDER_COLUMNS = ("order_no", "customer_code", "customer_email", "ordered_at", "currency",
                 "ship_region", "line_no", "sku", "qty", "unit_price", "updated_at", "total")


def _stock_key(row: dict) -> str | None:
    sku, warehouse = parse_text(row.get("sku")), parse_text(row.get("warehouse"))
    return f"{sku}@{warehouse}" if sku and warehouse else None


STREAMS: dict[str, FileStream] = {
    "orders": FileStream(
        kind="orders", columns=ORDER_COLUMNS, required=("order_no", "sku", "qty", "unit_price"),
        numeric=("qty", "unit_price", "total"), mapper=map_order, group_by="order_no",
    ),
    "customers": FileStream(
        kind="customers",
        columns=("code", "name", "email", "region", "customer_group", "credit_limit", "currency",
                 "updated_at"),
        required=("code",), numeric=("credit_limit",), mapper=map_customer,
        key=lambda row: parse_text(row.get("code")), folder="customers",
    ),
    "stock": FileStream(
        kind="stock", columns=("sku", "warehouse", "region", "qty", "updated_at"),
        required=("sku", "warehouse", "qty"), numeric=("qty",), mapper=map_stock,
        key=_stock_key, folder="stock",
    ),
}


@dataclass(frozen=True)
class DropFile:
    path: Path
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mtime(self) -> datetime:
        """mtime at microsecond precision: what a cursor can hold and compare."""
        secs, ns = divmod(self.mtime_ns, 1_000_000_000)
        return datetime.fromtimestamp(secs, UTC).replace(microsecond=ns // 1000)

    @property
    def position(self) -> Cursor:
        return Cursor(to_iso(self.mtime), self.name)

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix.lower() in PARQUET_SUFFIXES


@dataclass
class _Settings:
    stream: FileStream
    folder: Path
    patterns: tuple[str, ...]
    columns: dict[str, str]  # canonical -> configured file column name


@dataclass
class _Layout:
    """How one file's columns map to canonical names (fixed by its header)."""

    names: list[str]  # per file column: the key it gets in a row dict


class BadFile(Exception):
    """The file cannot be read as the layout says; str() is the one-line reason."""


# ---------------------------------------------------------------------------------- connector


class ConfirmationPush:
    """Push ``fulfilment`` as confirmation files in ``self.outbound`` (see the module docstring).

    Shared by the file-drop channels (``files``, ``tpch``); the class using it sets ``name``,
    ``system``, ``operations``, ``outbound`` (a Path) and ``confirmations_written`` (a Counter).
    """

    name: str
    system: ClassVar[str]
    operations: ClassVar[set[str]]
    outbound: Path
    confirmations_written: Counter[str]

    # Rows per drain batch (flows/push.py): one file per call, so a bigger batch means fewer
    # files, fsyncs and outbox commits; nothing here waits on a remote system.
    push_batch: ClassVar[int] = 5000

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        """One confirmation file per call; a key already confirmed is never written again."""
        if operation not in self.operations:
            raise ValueError(f"{self.system} cannot push {operation!r} (supports: fulfilment)")
        keys: list[str | None] = []  # per doc: its key, None for a doc without key or order_no
        wanted: dict[str, str] = {}  # key -> order_no, first doc wins
        for doc in docs:
            key = parse_text(doc.get("key"))
            order_no = parse_text(doc.get("order_no") or doc.get("order_external_id"))
            if key and order_no:
                wanted.setdefault(key, order_no)
                keys.append(key)
            else:
                keys.append(None)
        confirmed: dict[str, str] = {}
        error = "not confirmed"
        try:
            name = confirmation_name(list(wanted))
            confirmed = self._confirmed(list(wanted), everywhere=recover, name=name)
            todo = [k for k in wanted if k not in confirmed]
            if todo:
                if len(todo) < len(wanted):
                    name = confirmation_name(todo)
                self._write_confirmations(name, [(wanted[k], k) for k in todo])
                confirmed.update(dict.fromkeys(todo, name))
        except (OSError, ValueError) as err:  # ValueError: an unreadable confirmation file
            error = str(SourceError(self.name, f"confirmations in {self.outbound}: "
                                               f"{getattr(err, 'strerror', None) or err}"))
        results = []
        for doc, key in zip(docs, keys, strict=True):
            if key is None:
                results.append(PushResult(str(doc.get("key")), False,
                                          error="fulfilment doc: key and order_no are required"))
                continue
            where = confirmed.get(key)
            results.append(PushResult(key, True, remote_id=where) if where
                           else PushResult(key, False, error=error))
        return results

    def _confirmed(self, keys: list[str], everywhere: bool, name: str | None = None
                   ) -> dict[str, str]:
        """key -> confirmation file already holding it: that batch's own file (``name``, the
        keys' ``confirmation_name``), or (recover) every confirmation file in the outbound
        folder."""
        if everywhere:
            found = read_confirmations(self.outbound)
        else:
            path = self.outbound / (name or confirmation_name(keys))
            found = _read_confirmation_file(path) if path.exists() else {}
        return {k: found[k] for k in keys if k in found}

    def _write_confirmations(self, name: str, rows: list[tuple[str, str]]) -> None:
        """One file of (order_no, key) rows, written atomically."""
        now = to_iso(datetime.now(UTC).replace(microsecond=0))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CONFIRMATION_COLUMNS)
        writer.writerows([order_no, CONFIRMED_STATUS, key, now] for order_no, key in rows)
        _atomic_write(self.outbound / name, buf.getvalue().encode("utf-8"))
        self.confirmations_written.update(key for _, key in rows)


class FileDropConnector(ConfirmationPush, Connector):
    system = "files"
    streams: ClassVar[dict[str, FileStream]] = STREAMS  # type: ignore[assignment]
    operations = {"fulfilment"}

    def __init__(self, name: str, cfg: dict) -> None:
        # No HttpClient: nothing here speaks HTTP, so the base __init__ is not used.
        self.name = name
        self.cfg = cfg
        self.options: dict[str, Any] = dict(cfg.get("options") or {})
        self.lookback = timedelta(seconds=int(cfg.get("lookback_seconds", 600)))
        self.inbox = _folder(name, cfg.get("base_url"))
        self._check_options()
        self.outbound = self._path("outbound", self.inbox.parent / "outbound")
        self.quarantine = self._path("quarantine", self.inbox / "quarantine")
        self.manifest_path = self.inbox / MANIFEST
        self.batch_rows = int(self.options.get("batch_rows") or 5000)
        self.settle = timedelta(seconds=float(self.options.get("settle_seconds") or 0))
        csv_opts = dict(self.options.get("csv") or {})
        self.delimiter = str(csv_opts.get("delimiter", ","))
        self.encoding = str(csv_opts.get("encoding", "utf-8"))
        self.block_size = int(csv_opts.get("block_size") or 1 << 20)
        if self.batch_rows < 1 or len(self.delimiter) != 1 or self.block_size < 1024:
            raise ValueError(f"source {name!r}: options need batch_rows >= 1, a one-character "
                             "csv.delimiter and csv.block_size >= 1024")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"source {name!r}: options.csv.encoding: unknown encoding "
                             f"{self.encoding!r}") from None
        # What this connector did, for tests and the run summary.
        self.opened_files: list[str] = []  # files opened for reading, in order
        self.quarantined_files: list[tuple[str, str]] = []  # (name, reason)
        self.batches_read = 0  # arrow batches pulled while emitting (streaming evidence)
        self.confirmations_written: Counter[str] = Counter()  # key -> rows written by push

    def close(self) -> None:
        """Nothing to release: every file is closed after use."""

    # -- configuration ---------------------------------------------------------------------------

    def _check_options(self) -> None:
        unknown = set(self.options) - OPTION_KEYS
        if unknown:
            raise ValueError(f"source {self.name!r}: unknown option {sorted(unknown)[0]!r} "
                             f"(known: {', '.join(sorted(OPTION_KEYS))})")
        for key in ("orders", "customers", "stock"):
            bad = set(self.options.get(key) or {}) - STREAM_OPTION_KEYS
            if bad:
                raise ValueError(f"source {self.name!r}: unknown option {key}.{sorted(bad)[0]} "
                                 f"(known: {', '.join(sorted(STREAM_OPTION_KEYS))})")
        bad = set(self.options.get("csv") or {}) - CSV_OPTION_KEYS
        if bad:
            raise ValueError(f"source {self.name!r}: unknown option csv.{sorted(bad)[0]} "
                             f"(known: {', '.join(sorted(CSV_OPTION_KEYS))})")

    def _path(self, key: str, default: Path) -> Path:
        value = self.options.get(key)
        return (self.inbox / value).resolve() if value else default.resolve()

    def _settings(self, stream: str) -> _Settings:
        try:
            spec = self.streams[stream]
        except KeyError:
            raise ValueError(f"files source {self.name!r} has no stream {stream!r} "
                             f"(has: {', '.join(sorted(self.streams))})") from None
        own = dict(self.options.get(stream) or {})
        if stream == "orders":  # the top-level shorthands are the orders stream's
            own.setdefault("pattern", self.options.get("pattern"))
            own.setdefault("columns", self.options.get("columns"))
        patterns = own.get("pattern") or ["*.csv", "*.parquet"]
        if isinstance(patterns, str):
            patterns = [patterns]
        columns = {str(k): str(v) for k, v in (own.get("columns") or {}).items()}
        unknown = set(columns) - set(spec.columns)
        if unknown:
            raise ValueError(f"source {self.name!r}: columns.{sorted(unknown)[0]} is not a "
                             f"{stream} column (known: {', '.join(spec.columns)})")
        folder = own.get("folder", spec.folder)
        return _Settings(spec, (self.inbox / folder).resolve() if folder else self.inbox,
                         tuple(patterns), columns)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        """Pages of whole records, file by file in (mtime, name) order. See the module docstring."""
        st = self._settings(stream)
        files = self._list(st)
        since = parse_datetime(cursor.updated_at, "cursor.updated_at") if cursor else None
        since = since - self.lookback if since else None
        manifest = self._load_manifest()
        had_manifest = stream in manifest
        known: dict[str, dict] = manifest.setdefault(stream, {})
        for gone in set(known) - {f.name for f in files}:  # keep the manifest small
            del known[gone]
        done, sent = cursor, None  # done: position of the last fully emitted file
        now = datetime.now(UTC)
        saved_at = time.monotonic()
        try:
            for f in files:
                # A future mtime is a skewed clock, not a file being written: it never settles.
                if self.settle and now - self.settle < f.mtime <= now:
                    log.info("files %s: %s was modified less than %ss ago; left for the next run",
                             self.name, f.name, self.settle.total_seconds())
                    break  # later files are newer still: the cursor must not pass this one
                entry = known.get(f.name)
                decision = self._decide(f, since, cursor, entry, had_manifest)
                if decision == "skip":
                    if entry is None:  # no manifest yet: remember what the cursor passed
                        known[f.name] = {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": None}
                    continue
                try:
                    digest = _sha256(f.path)
                except FileNotFoundError:
                    log.warning("files %s: %s disappeared before it was read", self.name, f.name)
                    continue
                except OSError as err:
                    raise SourceError(self.name, f"cannot read {f.name}: {err.strerror or err}",
                                      url=f.path.as_uri()) from None
                if decision == "check" and entry and entry.get("sha256") == digest:
                    entry.update(size=f.size, mtime_ns=f.mtime_ns)  # touched, same content
                    continue
                self.opened_files.append(f.name)
                try:
                    layout = self._validate(st, f)
                except BadFile as bad:
                    if _stat(f.path) != (f.size, f.mtime_ns):
                        self._still_written(f)
                        break  # still being written, not bad: the next run looks again
                    self._quarantine(f, str(bad))
                    known.pop(f.name, None)
                    done = later(done, f.position)
                    continue
                if _stat(f.path) != (f.size, f.mtime_ns):
                    self._still_written(f)
                    break
                complete = False
                for records, last in self._pages_guarded(st, f, layout):
                    if last:
                        if _stat(f.path) != (f.size, f.mtime_ns):
                            break  # its held last order may be cut short: all read again later
                        complete = True
                        done = later(done, f.position)  # the page completing the file
                    if records or last:
                        yield Page(records, done)
                        sent = done
                if not complete:
                    self._still_written(f)
                    break  # the cursor stays before this file, so later ones wait too
                # Recorded only now: the consumer has taken every page of the file.
                known[f.name] = {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": digest}
                if since is not None and f.mtime < since and cursor is not None:
                    # Read behind the cursor (a late or changed old file): its pages cannot move
                    # the cursor, so this entry counts only once a later cursor is committed.
                    known[f.name]["until"] = [cursor.updated_at, cursor.id]
                if time.monotonic() - saved_at > 2:
                    self._save_manifest(manifest)
                    saved_at = time.monotonic()
        finally:
            self._save_manifest(manifest)
        if sent is None or done != sent:
            yield Page([], done)  # e.g. the last file was quarantined: the cursor still moves

    def _still_written(self, f: DropFile) -> None:
        log.warning("files %s: %s changed while it was read (still being written?); it and the "
                    "files after it are read on the next run", self.name, f.name)

    def _decide(self, f: DropFile, since: datetime | None, cursor: Cursor | None,
                entry: dict | None, had_manifest: bool) -> str:
        """"open", "skip" or "check" (the hash decides) for one file."""
        if since is None or cursor is None or f.mtime >= since:
            return "open"  # first read, or inside the overlap window: at-least-once
        if entry is None:
            # Older than the window and never seen: copied in with its old mtime. Without a
            # manifest there is nothing to compare with, so the cursor is trusted.
            return "open" if had_manifest else "skip"
        until = entry.get("until")
        if until:
            if cursor_key(cursor) <= cursor_key(Cursor(*until)):
                return "open"  # read behind the cursor, maybe never committed: read again
            del entry["until"]  # a later cursor was committed, and with it this file's records
        if entry.get("size") == f.size and entry.get("mtime_ns") == f.mtime_ns:
            return "skip"
        return "check"

    def _list(self, st: _Settings) -> list[DropFile]:
        folder = st.folder
        files = []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.startswith(".") or not any(
                        fnmatch.fnmatchcase(e.name.lower(), p.lower()) for p in st.patterns
                    ):
                        continue
                    try:
                        if not e.is_file():
                            continue
                        s = e.stat()
                    except FileNotFoundError:
                        continue  # moved away while listing
                    files.append(DropFile(Path(e.path), s.st_size, s.st_mtime_ns))
        except FileNotFoundError:
            raise SourceError(self.name, f"inbox folder {folder} not found",
                              url=folder.as_uri()) from None
        except NotADirectoryError:
            raise SourceError(self.name, f"inbox {folder} is not a folder",
                              url=folder.as_uri()) from None
        except OSError as err:
            raise SourceError(self.name, f"cannot read inbox folder {folder}: "
                              f"{err.strerror or err}", url=folder.as_uri()) from None
        return sorted(files, key=lambda f: (f.mtime_ns // 1000, f.name))

    # -- one file: layout, validation, pages -----------------------------------------------------

    def _layout(self, st: _Settings, f: DropFile, header: list[str],
                types: dict[str, pa.DataType] | None = None) -> _Layout:
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise BadFile(f"{f.name}: duplicate column {dupes[0]!r}")
        by_lower = {h.strip().lower(): h for h in header}
        canonical_of: dict[str, str] = {}
        missing = []
        for col in st.stream.columns:
            wanted = st.columns.get(col, col)
            found = wanted if wanted in header else by_lower.get(wanted.strip().lower())
            if found is None:
                if col in st.stream.required:
                    missing.append(wanted if wanted == col else f"{wanted} ({col})")
                continue
            canonical_of[found] = col
        if missing:
            raise BadFile(f"{f.name}: missing required column(s) {', '.join(missing)}")
        names = []
        for h in header:  # unmapped columns are kept under their own name
            name = canonical_of.get(h) or h
            names.append(f"{h} (unmapped)" if h not in canonical_of and h in st.stream.columns
                         else name)
        layout = _Layout(names)
        for h, t in (types or {}).items():
            col = canonical_of.get(h)
            t = t.value_type if pa.types.is_dictionary(t) else t
            if pa.types.is_floating(t) and col in st.stream.numeric:
                raise BadFile(f"{f.name}: column {h!r} ({col}) is {t}: money and quantities "
                              "must be decimal, integer or text, never float")
            if not _supported(t):
                raise BadFile(f"{f.name}: column {h!r} has unsupported type {t}")
        return layout

    def _open(self, st: _Settings, f: DropFile) -> tuple[_Layout, Iterator[pa.RecordBatch]]:
        """The file's layout and a streaming iterator of its batches (rows still unsliced)."""
        if f.is_parquet:
            pf = pq.ParquetFile(f.path)
            schema = pf.schema_arrow
            layout = self._layout(st, f, list(schema.names),
                                  {n: schema.field(n).type for n in schema.names})
            return layout, pf.iter_batches(batch_size=self.batch_rows)
        read = pacsv.ReadOptions(encoding=self.encoding, block_size=self.block_size)
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        with pacsv.open_csv(f.path, read_options=read, parse_options=parse) as probe:
            header = list(probe.schema.names)  # the first block only: cheap
        layout = self._layout(st, f, header)
        # Every column as a string: no type inference, so "0012.50" and "1e3" stay as written.
        convert = pacsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                       strings_can_be_null=False)
        return layout, iter(pacsv.open_csv(f.path, read_options=read, parse_options=parse,
                                           convert_options=convert))

    def _validate(self, st: _Settings, f: DropFile) -> _Layout:
        """A full pass before anything of the file is emitted: a bad file is never half-read."""
        try:
            layout, batches = self._open(st, f)
            group = st.stream.group_by
            idx = layout.names.index(group) if group else -1
            seen: set[str] = set()
            last: str | None = None
            row = 0
            for batch in batches:
                if idx < 0:
                    continue  # the parse itself is the check
                for value in batch.column(idx).to_pylist():
                    row += 1
                    key = parse_text(value)
                    if key is None or key == last:
                        continue
                    if key in seen:
                        raise BadFile(f"{f.name}: the rows of order {key} are not consecutive "
                                      f"(again at data row {row})")
                    seen.add(key)
                    last = key
            return layout
        except BadFile:
            raise
        except _FILE_ERRORS as err:
            kind = "Parquet" if f.is_parquet else f"CSV ({self.encoding})"
            raise BadFile(f"{f.name}: not readable as {kind}: {_one_line(err)}") from None

    def _pages_guarded(self, st: _Settings, f: DropFile,
                       layout: _Layout) -> Iterator[tuple[list[RawRecord], bool]]:
        """``_pages``; a read error after validation means the file changed under us (then
        ``read`` keeps the cursor before it and stops) or, if it did not, a clear SourceError."""
        it = self._pages(st, f, layout)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except _FILE_ERRORS as err:
                if _stat(f.path) == (f.size, f.mtime_ns):
                    raise SourceError(self.name, f"{f.name}: read failed after validation: "
                                      f"{_one_line(err)}", url=f.path.as_uri()) from None
                return  # no completing page: the cursor stays before this file
            yield item

    def _pages(self, st: _Settings, f: DropFile,
               layout: _Layout) -> Iterator[tuple[list[RawRecord], bool]]:
        """(records, completes_file) per slice of ``batch_rows`` rows; orders are never split."""
        _, batches = self._open(st, f)
        names = layout.names
        meta = {"file": f.name, "file_mtime": to_iso(f.mtime)}
        group, key_of = st.stream.group_by, st.stream.key
        held: list[dict] = []  # rows of the order still open at the end of the last slice
        held_key: str | None = None
        row_no = 0
        records: list[RawRecord] = []

        def record(rows: list[dict], key: str | None) -> RawRecord:
            if group:
                payload = {**meta, "order_no": key, "lines": rows}
            else:
                payload = {**meta, "row": rows[0]}
                key = key_of(rows[0])
            rid = key or f"{f.name}#row{rows[0]['_row']}"  # the mapper rejects it, visibly
            return RawRecord(rid, _record_updated(rows, f), payload)

        for batch in batches:
            self.batches_read += 1
            for start in range(0, batch.num_rows, self.batch_rows):
                part = batch.slice(start, self.batch_rows)
                columns = [_cells(c.to_pylist()) for c in part.columns]
                for values in zip(*columns, strict=True):
                    row_no += 1
                    row = dict(zip(names, values, strict=True))
                    row["_row"] = row_no
                    key = parse_text(row.get(group)) if group else None
                    if held and (not group or key is None or key != held_key):
                        records.append(record(held, held_key))
                        held = []
                    held.append(row)
                    held_key = key
                if records:
                    yield records, False
                    records = []
        if held:
            records.append(record(held, held_key))
        yield records, True

    # -- quarantine and manifest -----------------------------------------------------------------

    def _quarantine(self, f: DropFile, reason: str) -> None:
        reason = _one_line(reason)
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            dest = self.quarantine / f.name
            n = 1
            while dest.exists():  # never overwrite an earlier quarantined file of that name
                dest = self.quarantine / f"{f.path.stem}.{n}{f.path.suffix}"
                n += 1
            shutil.move(f.path, dest)
            dest.with_name(dest.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        except OSError as err:
            # Leaving a bad file in place would hide it behind the cursor: fail the read.
            raise SourceError(self.name, f"cannot quarantine {f.name} ({reason}): "
                              f"{err.strerror or err}", url=self.quarantine.as_uri()) from None
        log.warning("files %s: quarantined %s to %s: %s", self.name, f.name, dest, reason)
        self.quarantined_files.append((f.name, reason))

    def _load_manifest(self) -> dict[str, dict[str, dict]]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("files %s: manifest %s unreadable (%s); trusting the cursor only",
                        self.name, self.manifest_path, _one_line(err))
            return {}
        streams = data.get("streams") if isinstance(data, dict) else None
        return streams if isinstance(streams, dict) else {}

    def _save_manifest(self, streams: dict[str, dict[str, dict]]) -> None:
        text = json.dumps({"version": 1, "streams": streams}, indent=1, sort_keys=True)
        try:
            _atomic_write(self.manifest_path, text.encode("utf-8"))
        except OSError as err:
            raise SourceError(self.name, f"cannot write manifest {self.manifest_path}: "
                              f"{err.strerror or err}") from None

    # -- mapping ---------------------------------------------------------------------------------

    def map(self, stream: str, payload: dict) -> dict:
        return self._spec(stream).mapper(payload)  # type: ignore[union-attr,return-value]


# ------------------------------------------------------------------------------------ helpers


def confirmation_name(keys: list[str]) -> str:
    """Deterministic file name of a batch: the same keys always give the same name."""
    digest = hashlib.sha1("\n".join(sorted(set(keys))).encode("utf-8")).hexdigest()
    return f"confirmations-{digest[:12]}.csv"


def read_confirmations(folder: Path | str) -> dict[str, str]:
    """key -> first confirmation file holding it, over every confirmation file in ``folder``."""
    out: dict[str, str] = {}
    for path in sorted(Path(folder).glob("confirmations-*.csv")):
        for key, name in _read_confirmation_file(path).items():
            out.setdefault(key, name)
    return out


def count_confirmations(folder: Path | str) -> Counter[str]:
    """key -> number of confirmation rows for it across all files (exactly-once means all 1)."""
    counts: Counter[str] = Counter()
    for path in sorted(Path(folder).glob("confirmations-*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            counts.update(row["key"] for row in csv.DictReader(fh) if row.get("key"))
    return counts


def _read_confirmation_file(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["key"]: path.name for row in csv.DictReader(fh) if row.get("key")}


def _folder(source: str, base_url: Any) -> Path:
    """``file:///abs/folder`` (or ``/abs/folder``) -> Path; anything else is a config error."""
    text = str(base_url or "")
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"source {source!r}: base_url {text!r}: only local file URLs "
                             "(file:///abs/folder) are supported")
        text = unquote(parts.path)
    path = Path(text)
    if not text or not path.is_absolute():
        raise ValueError(f"source {source!r}: base_url must be file:///abs/folder or an absolute "
                         f"path, got {base_url!r}")
    return path


def _record_updated(rows: list[dict], f: DropFile) -> datetime:
    stamps = []
    for row in rows:
        try:
            stamp = parse_datetime(row.get("updated_at"), "updated_at")
        except MappingError:
            continue  # the mapper rejects it; reading goes on
        if stamp is not None:
            stamps.append(stamp)
    return max(stamps) if stamps else f.mtime


def _cells(values: list[Any]) -> list[Any]:
    """Arrow values -> payload values: text, Decimal, int and bool as they are; times as ISO
    text; a float (only ever in a non-money column) as its shortest exact text."""
    if not values or all(v is None or isinstance(v, str) for v in values):
        return values
    out = []
    for v in values:
        if isinstance(v, datetime | date):
            v = v.isoformat()
        elif isinstance(v, float):
            v = repr(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "backslashreplace")
        out.append(v)
    return out


def _supported(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_decimal(t)
            or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_timestamp(t)
            or pa.types.is_date(t) or pa.types.is_floating(t) or pa.types.is_null(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return s.st_size, s.st_mtime_ns


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a hidden temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())
