"""Fake file drop (system ``files``): not an HTTP server but a temp folder of order files.

    fake = FileDropFake(dataset)          # renders dataset.orders["files"] on start()
    base_url = fake.start()               # file:///tmp/orderhub-files-xxxx/inbox
    ...
    fake.creates                          # Counter of ("fulfilment", key) read from outbound/
    fake.stop()                           # removes the folder

``start_sandbox`` starts it by preparing the folder (``serves_http = False``) instead of serving
it. Layout under a fresh temp root::

    inbox/orders-001.csv, orders-002.csv   # text only: Decimal as written, times ISO-8601 UTC
    inbox/orders-003.parquet               # decimal128 money, int64/decimal qty, UTC timestamps
    inbox/orders-000-bad.csv               # with bad_file=True: no qty / unit_price columns
    outbound/                              # where the connector writes confirmations

Orders are sorted by (updated_at, order_no) and split evenly over the files, one row per line;
each file's mtime is the latest ``updated_at`` in it (the file-drop cursor runs on mtimes).
Unparseable neutral values ("two", "N/A") are written as they are: in Parquet that column is
then text for that file, as a real sender's export would be.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

COLUMNS = ("order_no", "customer_code", "customer_email", "ordered_at", "currency", "ship_region",
           "line_no", "sku", "qty", "unit_price", "updated_at", "total")
MONEY = ("unit_price", "total")
TIMES = ("ordered_at", "updated_at")
_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


def neutral_orders(dataset: Any) -> list[dict]:
    """The ``files`` channel's neutral orders of a Dataset, a dict, or a plain list of orders."""
    if isinstance(dataset, list):
        return dataset
    orders = dataset["orders"] if isinstance(dataset, dict) else dataset.orders
    return list(orders.get("files", [])) if isinstance(orders, dict) else list(orders)


def order_rows(o: dict) -> list[dict]:
    """One neutral order -> its file rows (one per line), values still neutral."""
    head = {k: o.get(k) for k in ("order_no", "customer_code", "customer_email", "ordered_at",
                                  "currency", "ship_region", "updated_at", "total")}
    return [{**head, "line_no": li.get("line_no", n), "sku": li.get("sku"), "qty": li.get("qty"),
             "unit_price": li.get("unit_price")}
            for n, li in enumerate(o.get("lines") or [], start=1)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _mtime(orders: list[dict]) -> datetime:
    stamps = [o["updated_at"] for o in orders if isinstance(o.get("updated_at"), datetime)]
    return max(stamps) if stamps else _EPOCH


def set_mtime(path: Path, when: datetime) -> None:
    ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    os.utime(path, ns=(ns, ns))


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS,
              delimiter: str = ",", encoding: str = "utf-8") -> None:
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(c)) for c in columns])


def write_parquet(path: Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    """Typed like a real export: decimal128 money, int64 or decimal qty, UTC timestamps; a column
    holding an unparseable value falls back to text."""
    import pyarrow as pa  # lazy: only a Parquet-writing fake needs it
    import pyarrow.parquet as pq

    arrays = {}
    for col in columns:
        values = [r.get(col) for r in rows]
        present = [v for v in values if v is not None]
        numeric = all(isinstance(v, Decimal | int) and not isinstance(v, bool) for v in present)
        if col in MONEY + ("qty", "line_no") and numeric:
            decimals = [Decimal(v) for v in present]
            if col in ("qty", "line_no") and all(d == d.to_integral_value() for d in decimals):
                arrays[col] = pa.array([None if v is None else int(v) for v in values], pa.int64())
                continue
            scale = max([-d.as_tuple().exponent for d in decimals] + [2])
            arrays[col] = pa.array([None if v is None else Decimal(v) for v in values],
                                   pa.decimal128(38, scale))
        elif col in TIMES and all(isinstance(v, datetime) for v in present):
            arrays[col] = pa.array(values, pa.timestamp("us", tz="UTC"))
        else:
            arrays[col] = pa.array([None if v is None else _text(v) for v in values], pa.string())
    pq.write_table(pa.table(arrays), path)


class FileDropFake:
    """A file drop in a temp folder; the sandbox's stand-in for a distributor's SFTP inbox."""

    serves_http: ClassVar[bool] = False

    def __init__(self, dataset: Any, fast: bool = True, *, csv_files: int = 2,
                 parquet_files: int = 1, bad_file: bool = False) -> None:
        self.orders = neutral_orders(dataset)
        self.fast = fast  # nothing to throttle in a folder; kept for the common signature
        self.csv_files, self.parquet_files, self.bad_file = csv_files, parquet_files, bad_file
        self.root: Path | None = None
        self.files: list[str] = []  # names rendered into the inbox
        # No HTTP: kept empty so tests written for HTTP fakes can clear/inspect it unchanged.
        self.requests: list[Any] = []

    # -- sandbox wiring --------------------------------------------------------------------------

    def start(self) -> str:
        """Prepare the folder (once) and return the connector's ``base_url``."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="orderhub-files-"))
            self.inbox.mkdir()
            self.outbound.mkdir()
            self._render()
        return self.base_url

    def stop(self) -> None:
        """Remove the folder; safe to call twice."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def base_url(self) -> str:
        return self.inbox.as_uri()

    @property
    def inbox(self) -> Path:
        return self._root() / "inbox"

    @property
    def outbound(self) -> Path:
        return self._root() / "outbound"

    @property
    def quarantine(self) -> Path:
        return self.inbox / "quarantine"

    def credentials(self) -> dict[str, str]:
        return {}  # a local folder has no credentials

    def options(self) -> dict[str, Any]:
        return {"outbound": str(self.outbound)}

    @property
    def creates(self) -> Counter[tuple[str, str]]:
        """("fulfilment", key) -> confirmation rows delivered to the outbound folder, read the
        way the distributor would read them (exactly-once means every count is 1)."""
        counts: Counter[tuple[str, str]] = Counter()
        for path in sorted(self.outbound.glob("confirmations-*.csv")):
            with path.open(encoding="utf-8", newline="") as fh:
                counts.update(("fulfilment", row["key"]) for row in csv.DictReader(fh)
                              if row.get("key"))
        return counts

    # -- files -----------------------------------------------------------------------------------

    def add_file(self, name: str, orders: list[dict], mtime: datetime | None = None) -> Path:
        """Drop a file of neutral orders (format by suffix); mtime defaults to their latest
        updated_at. Tests use it to simulate a new or re-sent file."""
        path = self.inbox / name
        rows = [r for o in orders for r in order_rows(o)]
        if path.suffix.lower() in (".parquet", ".pq"):
            write_parquet(path, rows)
        else:
            write_csv(path, rows)
        set_mtime(path, mtime or _mtime(orders))
        if name not in self.files:
            self.files.append(name)
        return path

    def add_bad_file(self, name: str = "orders-000-bad.csv", mtime: datetime | None = None) -> Path:
        """A file missing the qty and unit_price columns: the connector must quarantine it."""
        path = self.inbox / name
        write_csv(path, [{"order_no": "BAD-1", "sku": "SKU-00001"}],
                  columns=("order_no", "sku", "currency"))
        set_mtime(path, mtime or _mtime(self.orders))
        self.files.append(name)
        return path

    def break_inbox(self) -> str:
        """Put a plain file where the inbox folder was (the inbox is kept aside); returns the
        text the connector's error names."""
        aside = self._root() / "inbox.aside"
        self.inbox.rename(aside)
        self.inbox.write_text("not a folder\n", encoding="utf-8")
        return "inbox"

    def _render(self) -> None:
        ordered = sorted(self.orders, key=lambda o: (o.get("updated_at") or _EPOCH,
                                                     str(o.get("order_no"))))
        count = max(self.csv_files + self.parquet_files, 1)
        size = -(-len(ordered) // count) if ordered else 0
        for i in range(count):
            chunk = ordered[i * size:(i + 1) * size]
            if not chunk:
                continue
            suffix = "csv" if i < self.csv_files else "parquet"
            self.add_file(f"orders-{i + 1:03d}.{suffix}", chunk)
        if self.bad_file:
            self.add_bad_file()

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("FileDropFake is not started (call start())")
        return self.root
