"""TPC-H data for the ``tpch`` channel: tpchgen-cli's Parquet with seeded defects and known truth.

    truth = generate_tpch(0.1, Path("var/bench/drop"))    # cached tpchgen run + drop folder
    truth = load_truth(Path("var/bench/truth.json"))       # the same, in another process

``generate_tpch`` runs ``tpchgen-cli parquet`` once per scale factor into ``<cache>/sf<sf>``
(reused afterwards), then writes the drop folder:

- customer, part, partsupp, supplier, nation, region: copied as they are;
- orders, lineitem: rewritten with defects, streamed batch by batch (``iter_batches`` +
  ``ParquetWriter``, vectorised with pyarrow.compute / numpy; memory is bounded by the batch
  size plus the few duplicated orders), still sorted by order key;
- payments: one per clean paid / part-paid order, plus a few unmatched ones.

Defects: an order is defective when a hash of (seed, orderkey) falls under ``defect_rate``; a
second part of the hash picks its one kind, each failing exactly one check of the suite:

- ``customer_known``: o_custkey + 10**9 (no customer has it);
- ``sku_known``: line 1's l_partkey + 10**9 (no part has it; no list price either, so
  price_matches_list passes it by);
- ``qty_positive``: line 1's l_quantity 0 and its l_extendedprice the unit price (the connector's
  unit price of a 0 line is l_extendedprice, so the price still matches the list);
- ``price_matches_list``: line 1's l_extendedprice x 1.1 (rounded to the cent; unit price 10 %
  over p_retailprice);
- ``not_duplicate``: the order itself stays as it is (clean, the original) and a copy (same
  customer, date, lines; o_orderkey above the max) is appended at the end of both files: the
  copy is the defect. The suite's content key (customer, date, currency, total, lines) ranks
  the copy after its original: same ordered_at, later id.

Caveat for ``customer_known``: the connector takes the ship region from the customer, so an
order of an unknown customer has none (required_fields' ship_region) unless the source sets
``options.default_ship_region``; see docs/internals.md "TPC-H channel".

Payments (clean orders; originals of duplicates included): o_orderstatus F -> the invoice amount
(sum of l_extendedprice = qty x p_retailprice; no tax), P -> half of it rounded down to the cent,
O -> none. received_at = o_orderdate + 30 days. Unmatched: ``max(1, round(orders x rate / 20))``
payments quoting ``UNKNOWN-<n>`` from customer codes no customer has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "var" / "tpch"
TABLES = ("orders", "lineitem", "customer", "part", "partsupp", "supplier", "nation", "region")
COPIED = ("customer", "part", "partsupp", "supplier", "nation", "region")
KINDS = ("customer_known", "sku_known", "qty_positive", "price_matches_list", "not_duplicate")
CUSTOMER, SKU, QTY, PRICE, DUPLICATE = range(len(KINDS))
CLEAN = -1
BAD_KEY = 10**9  # added to a key: no customer / part has it
UNKNOWN_CUSTOMER = 2 * 10**9  # customer codes of unmatched payments: C2000000001...
CURRENCY = "USD"
BATCH = 16_384  # orders per batch (and per row group of the rewritten files)
PAY_DAYS = 30
US_PER_DAY = 86_400 * 10**6
MASK64 = (1 << 64) - 1

PAYMENTS_SCHEMA = pa.schema([
    ("external_id", pa.string()),
    ("reference", pa.string()),
    ("customer_code", pa.string()),
    ("currency", pa.string()),
    ("amount", pa.decimal128(15, 2)),
    ("received_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class TpchTruth:
    sf: float
    orders: int  # incl. the duplicate copies
    lines: int
    customers: int
    parts: int
    stock_rows: int
    defects: dict[str, str]  # order_no -> the one check it must fail
    clean: int  # orders that pass every check
    invoice_status: dict[str, int]  # over clean orders: paid / part_paid / open
    unmatched_payments: set[str]  # payment external ids matching no order
    payments: int
    ample_stock: bool  # every part's supply (all suppliers) covers all lines' demand
    ample_single: bool = False  # ... and one supplier alone covers it (any_stock places all)
    seed: int = 7
    defect_rate: float = 0.02
    defects_by_kind: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["unmatched_payments"] = sorted(self.unmatched_payments)
        return data

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def load_truth(path: Path | str) -> TpchTruth:
    """The truth ``generate_tpch`` wrote (``<drop>/../truth.json``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["unmatched_payments"] = set(data["unmatched_payments"])
    return TpchTruth(**data)


# ------------------------------------------------------------------------------------ tpchgen


def tpchgen_path() -> str:
    """tpchgen-cli next to this Python first (the venv), else on PATH."""
    here = Path(sys.executable).parent / "tpchgen-cli"
    if here.exists():
        return str(here)
    found = shutil.which("tpchgen-cli")
    if not found:
        raise RuntimeError("tpchgen-cli not found (next to the Python or on PATH); "
                           "install it with: pip install 'tpchgen-cli==4.0.0'")
    return found


def sf_name(sf: float) -> str:
    return f"sf{sf:g}"


def tpchgen(sf: float, cache: Path | None = None) -> Path:
    """``<cache>/sf<sf>`` with the eight tables, generated unless already there."""
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    out = cache / sf_name(sf)
    if _complete(out):
        return out
    exe = tpchgen_path()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sf_name(sf)}-", dir=cache))
    try:
        done = subprocess.run([exe, "parquet", "-s", f"{sf:g}", f"--output-dir={tmp}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            last = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"tpchgen-cli -s {sf:g} failed ({done.returncode}): {last}")
        if not _complete(out):  # else another process made it meanwhile: use theirs
            shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier run
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _complete(folder: Path) -> bool:
    return all((folder / f"{t}.parquet").exists() for t in TABLES)


# ------------------------------------------------------------------------------------ defects


def _mix(seed: int, keys: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, key), vectorised: uint64 per key."""
    salt = np.uint64((seed * 0xD1B54A32D192ED03 + 0x9E3779B97F4A7C15) & MASK64)
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def defect_kinds(seed: int, keys: np.ndarray, rate: float) -> np.ndarray:
    """Per order key: the index into KINDS of its one defect, or CLEAN (-1)."""
    h = _mix(seed, keys)
    share = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    kind = ((h & np.uint64(0xFFFF)) % np.uint64(len(KINDS))).astype(np.int64)
    return np.where(share < rate, kind, CLEAN)


# ------------------------------------------------------------------------------------ money

MONEY = pa.decimal128(15, 2)
HUNDRED = pa.scalar(100, pa.int64())


def cents(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """decimal128(_, 2) -> int64 cents (exact)."""
    return pc.cast(pc.multiply(col, HUNDRED), pa.int64()).to_numpy()


def from_cents(values: np.ndarray) -> pa.Array:
    """int64 cents -> decimal128(15, 2), exact (the unscaled int128 built from the int64)."""
    lo = np.ascontiguousarray(values, dtype=np.int64)
    words = np.empty(2 * lo.size, dtype=np.int64)
    words[0::2] = lo
    words[1::2] = lo >> 63  # sign extension (little-endian int128)
    return pa.Array.from_buffers(MONEY, lo.size, [None, pa.py_buffer(words.tobytes())])


def _text(prefix: str, keys: pa.Array | np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(keys), pa.string()), "")


# ------------------------------------------------------------------------------------ the drop


@dataclass
class _Tally:
    orders: int = 0
    lines: int = 0
    max_key: int = 0
    defects: dict[str, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=lambda: {"paid": 0, "part_paid": 0,
                                                            "open": 0})
    payments: int = 0


def generate_tpch(sf: float, drop: Path, seed: int = 7, defect_rate: float = 0.02,
                  cache: Path | None = None) -> TpchTruth:
    """Fill ``drop`` (see the module docstring) and write ``drop/../truth.json``."""
    src = tpchgen(sf, cache)
    drop = Path(drop)
    drop.mkdir(parents=True, exist_ok=True)
    for table in COPIED:
        _replace(drop / f"{table}.parquet",
                 lambda tmp, t=table: shutil.copyfile(src / f"{t}.parquet", tmp))
    tally = _Tally()
    demand: dict[str, np.ndarray] = {"qty": np.zeros(1, np.int64)}
    with _Writers(drop) as w:
        opf, lpf = _parquet(src / "orders.parquet"), _parquet(src / "lineitem.parquet")
        w.open(_no_views(opf.schema_arrow), _no_views(lpf.schema_arrow))
        dup_orders: list[pa.RecordBatch] = []
        dup_lines: list[pa.Table] = []
        for ob, lines in _aligned(opf, lpf):
            okeys = ob.column("o_orderkey").to_numpy()
            kinds = defect_kinds(seed, okeys, defect_rate)
            lkeys = lines.column("l_orderkey").to_numpy()
            starts = np.searchsorted(lkeys, okeys, side="left")
            ends = np.searchsorted(lkeys, okeys, side="right")
            line_kind = np.repeat(kinds, ends - starts)
            first = lines.column("l_linenumber").to_numpy() == 1
            qty_c = cents(lines.column("l_quantity"))
            ext_c = cents(lines.column("l_extendedprice"))
            # payments and invoice truth: from the clean lines, before any defect
            _payments(w, tally, ob, kinds, ext_c, starts, ends)
            # duplicates: originals kept aside (clean), copied at the end
            dup = kinds == DUPLICATE
            if dup.any():
                dup_orders.append(ob.filter(pa.array(dup)))
                dup_lines.append(lines.filter(pa.array(np.repeat(dup, ends - starts))))
            # the defects
            custkey = ob.column("o_custkey").to_numpy()
            ob = _set(ob, "o_custkey",
                      pa.array(np.where(kinds == CUSTOMER, custkey + BAD_KEY, custkey)))
            partkey = lines.column("l_partkey").to_numpy()
            sku = first & (line_kind == SKU)
            qty0 = first & (line_kind == QTY)
            price = first & (line_kind == PRICE)
            unit_c = np.where(qty0, ext_c * 100 // np.maximum(qty_c, 1), 0)
            new_ext = np.where(price, (ext_c * 11 + 5) // 10, np.where(qty0, unit_c, ext_c))
            lines = _set(lines, "l_partkey", pa.array(np.where(sku, partkey + BAD_KEY, partkey)))
            lines = _set(lines, "l_quantity", from_cents(np.where(qty0, 0, qty_c)))
            lines = _set(lines, "l_extendedprice", from_cents(new_ext))
            for kind in (CUSTOMER, SKU, QTY, PRICE):
                for k in okeys[kinds == kind].tolist():
                    tally.defects[f"O{k}"] = KINDS[kind]
            valid = ~sku
            _add_demand(demand, partkey[valid], qty_c[valid] // 100)
            w.orders.write_batch(ob)
            w.lines.write_table(lines)
            tally.orders += ob.num_rows
            tally.lines += lines.num_rows
            tally.max_key = max(tally.max_key, int(okeys[-1]) if okeys.size else 0)
        originals = tally.orders
        _duplicates(w, tally, dup_orders, dup_lines, demand)
        _unmatched(w, tally, max(1, round(originals * defect_rate / 20)))
    stock_rows, ample, single = _stock(drop / "partsupp.parquet", demand["qty"])
    by_kind = {k: 0 for k in KINDS}
    for kind in tally.defects.values():
        by_kind[kind] += 1
    truth = TpchTruth(
        sf=sf, orders=tally.orders, lines=tally.lines,
        customers=pq.ParquetFile(drop / "customer.parquet").metadata.num_rows,
        parts=pq.ParquetFile(drop / "part.parquet").metadata.num_rows,
        stock_rows=stock_rows, defects=tally.defects, clean=tally.orders - len(tally.defects),
        invoice_status=tally.status,
        unmatched_payments={f"PAY-UNKNOWN-{n}" for n in range(1, w.unmatched + 1)},
        payments=tally.payments, ample_stock=ample, ample_single=single, seed=seed,
        defect_rate=defect_rate, defects_by_kind=by_kind,
    )
    truth.save(drop.parent / "truth.json")
    return truth


def _parquet(path: Path) -> pq.ParquetFile:
    # pre_buffer off: with it, pyarrow keeps every row group read so far cached (memory
    # growing with the file, 240 MB at SF1 lineitem) instead of one at a time
    return pq.ParquetFile(path, pre_buffer=False)


def _no_views(schema: pa.Schema) -> pa.Schema:
    """string_view -> string (pyarrow's take/filter have no string_view kernels)."""
    return pa.schema([pa.field(f.name, pa.string(), f.nullable, f.metadata)
                      if pa.types.is_string_view(f.type) else f for f in schema])


def _aligned(opf: pq.ParquetFile, lpf: pq.ParquetFile):
    """(orders batch, its lineitem rows as a Table), both files streamed in key order."""
    lschema = _no_views(lpf.schema_arrow)
    lines = (b.cast(lschema) for b in lpf.iter_batches(batch_size=4 * BATCH))
    oschema = _no_views(opf.schema_arrow)
    held: list[pa.RecordBatch] = []
    done = False
    for ob in opf.iter_batches(batch_size=BATCH):
        ob = ob.cast(oschema)
        top = ob.column("o_orderkey")[-1].as_py()
        while not done and (not held or held[-1].column("l_orderkey")[-1].as_py() <= top):
            try:
                held.append(next(lines))
            except StopIteration:
                done = True
        table = pa.Table.from_batches(held, schema=lschema)
        keys = table.column("l_orderkey").to_numpy()
        cut = int(np.searchsorted(keys, top, side="right"))
        held = table.slice(cut).to_batches()
        yield ob, table.slice(0, cut).combine_chunks()


def _set(data, name: str, values: pa.Array):
    i = data.schema.get_field_index(name)
    return data.set_column(i, data.schema.field(i), values.cast(data.schema.field(i).type))


def _add_demand(demand: dict[str, np.ndarray], partkeys: np.ndarray, qty: np.ndarray) -> None:
    if not partkeys.size:
        return
    counts = np.bincount(partkeys, weights=qty).astype(np.int64)
    have = demand["qty"]
    if counts.size > have.size:
        have = np.concatenate([have, np.zeros(counts.size - have.size, np.int64)])
    have[: counts.size] += counts
    demand["qty"] = have


def _stock(path: Path, demand: np.ndarray) -> tuple[int, bool, bool]:
    """partsupp rows; whether every part's supply covers its demand (in total; in one row)."""
    supply = np.zeros(demand.size, np.int64)
    best = np.zeros(demand.size, np.int64)
    rows = 0
    for b in _parquet(path).iter_batches(batch_size=BATCH * 4,
                                               columns=["ps_partkey", "ps_availqty"]):
        pk = b.column("ps_partkey").to_numpy()
        qty = b.column("ps_availqty").to_numpy().astype(np.int64)
        rows += b.num_rows
        keep = pk < demand.size
        np.add.at(supply, pk[keep], qty[keep])
        np.maximum.at(best, pk[keep], qty[keep])
    return rows, bool((demand <= supply).all()), bool((demand <= best).all())


def _payments(w: _Writers, tally: _Tally, ob: pa.RecordBatch, kinds: np.ndarray,
              ext_c: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Payments of the batch's clean orders (originals of duplicates are clean)."""
    run = np.concatenate([[0], np.cumsum(ext_c)])
    amount = run[ends] - run[starts]
    status = pc.cast(ob.column("o_orderstatus"), pa.string()).to_numpy(zero_copy_only=False)
    clean = (kinds == CLEAN) | (kinds == DUPLICATE)
    paid, part, open_ = clean & (status == "F"), clean & (status == "P"), clean & (status == "O")
    tally.status["paid"] += int(paid.sum())
    tally.status["part_paid"] += int(part.sum())
    tally.status["open"] += int(open_.sum())
    pays = paid | part
    if not pays.any():
        return
    keys = ob.column("o_orderkey").to_numpy()[pays]
    cust = ob.column("o_custkey").to_numpy()[pays]
    days = ob.column("o_orderdate").cast(pa.int32()).to_numpy().astype(np.int64)[pays]
    due = np.where(part[pays], amount[pays] // 2, amount[pays])
    w.pay(keys.size, _text("PAY-O", keys), _text("O", keys), _text("C", cust),
          from_cents(due), (days + PAY_DAYS) * US_PER_DAY)
    tally.payments += int(keys.size)


def _duplicates(w: _Writers, tally: _Tally, dup_orders: list[pa.RecordBatch],
                dup_lines: list[pa.Table], demand: dict[str, np.ndarray]) -> None:
    """Append a copy of each duplicate's original with a fresh key above the max (sorted)."""
    if not dup_orders:
        return
    orders = pa.Table.from_batches(dup_orders).combine_chunks()
    lines = pa.concat_tables(dup_lines).combine_chunks()
    old = orders.column("o_orderkey").to_numpy()
    new = np.arange(tally.max_key + 1, tally.max_key + 1 + old.size, dtype=np.int64)
    line_new = new[np.searchsorted(old, lines.column("l_orderkey").to_numpy())]
    orders = _set(orders, "o_orderkey", pa.array(new))
    lines = _set(lines, "l_orderkey", pa.array(line_new))
    w.orders.write_table(orders)
    w.lines.write_table(lines)
    _add_demand(demand, lines.column("l_partkey").to_numpy(), cents(lines.column("l_quantity"))
                // 100)
    for k in new.tolist():
        tally.defects[f"O{k}"] = "not_duplicate"
    tally.orders += orders.num_rows
    tally.lines += lines.num_rows
    tally.max_key = int(new[-1])


def _unmatched(w: _Writers, tally: _Tally, n: int) -> None:
    """``n`` payments quoting no order, from customer codes nobody has."""
    nums = np.arange(1, n + 1, dtype=np.int64)
    # 1998-09-01 (TPC-H's last order date is 1998-08-02) + n days
    base = int(np.datetime64("1998-09-01", "D").astype(np.int64))
    w.pay(n, _text("PAY-UNKNOWN-", nums), _text("UNKNOWN-", nums),
          _text("C", nums + UNKNOWN_CUSTOMER), from_cents(10_000 + nums * 137),
          (base + nums) * US_PER_DAY)
    w.unmatched = n
    tally.payments += n


class _Writers:
    """orders / lineitem / payments writers, each to a hidden temp file renamed on success."""

    def __init__(self, drop: Path) -> None:
        self.drop = drop
        self.unmatched = 0
        self._files: list[tuple[pq.ParquetWriter, Path, Path]] = []

    def __enter__(self) -> _Writers:
        return self

    def open(self, orders_schema: pa.Schema, lines_schema: pa.Schema) -> None:
        self.orders = self._writer("orders.parquet", orders_schema)
        self.lines = self._writer("lineitem.parquet", lines_schema)
        self.payments = self._writer("payments.parquet", PAYMENTS_SCHEMA)

    def _writer(self, name: str, schema: pa.Schema) -> pq.ParquetWriter:
        final = self.drop / name
        tmp = self.drop / f".{name}.{os.getpid()}.tmp"
        writer = pq.ParquetWriter(tmp, schema)
        self._files.append((writer, tmp, final))
        return writer

    def pay(self, n: int, ext: pa.Array, ref: pa.Array, cust: pa.Array, amount: pa.Array,
            received_us: np.ndarray) -> None:
        self.payments.write_batch(pa.RecordBatch.from_arrays(
            [ext, ref, cust, pa.array([CURRENCY] * n, pa.string()), amount,
             pa.array(received_us, pa.timestamp("us", tz="UTC"))],
            schema=PAYMENTS_SCHEMA))

    def __exit__(self, exc_type, exc, tb) -> None:
        for writer, tmp, final in self._files:
            writer.close()
            if exc_type is None:
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)


def _replace(final: Path, write) -> None:
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
