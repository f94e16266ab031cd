"""A seeded, deterministic order-to-cash world for the sandbox fakes, and the truth it planted.

``generate(seed, orders, ...)`` builds masters (customers, products with CNY and USD list prices,
warehouses, stock), orders in three channels and Kingdee receipts (payments), and a ``Truth`` that
says, for every order, where it must end up: clean (with the allocation rule of every line and the
invoice's payment status), defective (with the ONE check that must fail) or rejected (unparseable).

Everything is derived from ``random.Random(seed)`` and the fixed ``BASE_DATE``, never ``now()``:
two calls with the same arguments give equal datasets. Stdlib only; money is ``Decimal``.

The rules the truth assumes (the checks and the allocator must agree with them):

- ``customer_known``: shopify orders resolve by ``customer_email``, the others by ``customer_code``.
- ``price_matches_list``: each line's unit price equals the list price of its SKU *in the order's
  currency*. The check only compares where such a list price exists: an unknown SKU or a currency
  without a price list (EUR) has nothing to compare with, so it fails ``sku_known`` or
  ``currency_allowed`` only, never this check as well.
- ``qty_positive``: every line's qty > 0. ``sku_known``: every SKU is in the product master.
- ``currency_allowed``: CNY or USD. ``required_fields``: ``ship_region`` is missing.
- ``not_duplicate``: two orders share (resolved customer, UTC order date, currency, total, sorted
  (sku, qty, unit_price) lines); the one ordered later is the duplicate. Every planted duplicate is
  a jiandaoyun copy of an earlier clean shopify order, ordered (and updated) strictly later on the
  same UTC date; no other two orders share that key.
- Allocation: ``home_region`` when a warehouse in the order's ``ship_region`` holds enough for the
  whole line, else ``any_stock`` when another warehouse does, else ``backorder``. Stock is either
  zero or at least the whole demand for the SKU across all orders, so the outcome never depends on
  the order in which lines are allocated.
- Payments quote the order's ``order_no`` as ``reference``; a clean, fully allocated order's
  invoice is ``paid`` (sum == total, sometimes in two receipts), ``part_paid`` (40-60 %),
  ``over_paid`` (total + 0.50..10.00) or ``open`` (no receipt). Unmatched receipts quote a
  reference that is no order's ``order_no``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

BASE_DATE = datetime(2026, 11, 1, tzinfo=UTC)
WINDOW = timedelta(days=30)  # orders fall in the 30 days before BASE_DATE
_WINDOW_S = int(WINDOW.total_seconds())
CHANNELS = ("shopify", "jiandaoyun", "kingdee")
CHANNEL_SHARE = {"shopify": Decimal("0.40"), "jiandaoyun": Decimal("0.36")}  # kingdee: the rest
CHANNEL_CURRENCY = {"shopify": "USD", "jiandaoyun": "CNY", "kingdee": "CNY"}
REGIONS = ("east", "north", "south", "west")
WAREHOUSE_CODES = {r: f"WH-{r.upper()}" for r in REGIONS}
# The check ids, in the order the checks suite declares them.
CHECK_IDS = (
    "customer_known",
    "price_matches_list",
    "qty_positive",
    "sku_known",
    "currency_allowed",
    "required_fields",
    "not_duplicate",
)
LINE_RULES = ("home_region", "any_stock", "backorder")
INVOICE_STATUSES = ("paid", "part_paid", "over_paid", "open")
MIN_ORDERS = 50  # below this not every defect kind, rejection and duplicate fits

CENT = Decimal("0.01")
_QTY = tuple(Decimal(i) for i in range(11))  # shared immutable quantities
HUNDRED = Decimal(100)
USD_PER_CNY_DIVISOR = 7  # USD list price ~= CNY / 7

OrderKey = tuple[str, str]  # (channel, external_id)
LineKey = tuple[str, str, int]  # (channel, external_id, line_no)

_ROW_DEFECTS = CHECK_IDS[:-1]  # planted per order; not_duplicate is planted as copies
_FIRST = ("Li", "Wang", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu",
          "Ada", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gia", "Hugo", "Iris", "Jon")
_LAST = ("Trading", "Supply", "Retail", "Home", "Goods", "Works", "Mart", "Studio", "Depot", "Co")
_ITEMS = ("Kettle", "Lamp", "Mug", "Chair", "Desk", "Fan", "Heater", "Rug", "Shelf", "Clock",
          "Vase", "Towel", "Pillow", "Blender", "Toaster", "Mirror", "Basket", "Jar")
_ADJ = ("Classic", "Compact", "Deluxe", "Eco", "Mini", "Pro", "Smart", "Travel", "Slim", "Max")
_GROUPS = ("retail", "wholesale", "vip")
_UNMATCHED_REFS = ("XSDD9{:05d}", "JDY-9{:05d}", "#9{:06d}", "INV-X{:05d}")


@dataclass
class Truth:
    """What the generator planted; keys are ``(channel, external_id)``."""

    defects: dict[OrderKey, str] = field(default_factory=dict)  # key -> the one failing check id
    rejected: dict[OrderKey, str] = field(default_factory=dict)  # key -> why it cannot be parsed
    clean: set[OrderKey] = field(default_factory=set)
    line_rules: dict[LineKey, str] = field(default_factory=dict)  # clean orders' lines only
    backordered: set[OrderKey] = field(default_factory=set)  # clean, >= 1 backordered line
    invoice_status: dict[OrderKey, str] = field(default_factory=dict)  # clean, fully allocated
    unmatched_payments: set[str] = field(default_factory=set)  # payment external ids
    duplicates: dict[OrderKey, OrderKey] = field(default_factory=dict)  # copy -> original

    def counts(self) -> dict[str, int]:
        """Flat counts for assertions and printing (``defect.<check>``, ``invoice.<status>``)."""
        out = {
            "clean": len(self.clean),
            "defects": len(self.defects),
            "rejected": len(self.rejected),
            "duplicates": len(self.duplicates),
            "backordered": len(self.backordered),
            "invoiced": len(self.invoice_status),
            "unmatched_payments": len(self.unmatched_payments),
        }
        kinds = Counter(self.defects.values())
        out.update({f"defect.{check}": kinds[check] for check in CHECK_IDS})
        statuses = Counter(self.invoice_status.values())
        out.update({f"invoice.{status}": statuses[status] for status in INVOICE_STATUSES})
        rules = Counter(self.line_rules.values())
        out.update({f"rule.{rule}": rules[rule] for rule in LINE_RULES})
        return out


@dataclass
class Dataset:
    """Neutral records the fakes render in each API's shape, plus the truth.

    Beyond the documented keys, customers, products and stock rows carry a stable
    ``external_id`` (customers: a jiandaoyun-style 24-hex ``_id``; products and stock: numeric
    Kingdee ids) so the fakes need not invent their own.
    """

    customers: list[dict]
    products: list[dict]
    warehouses: list[dict]
    stock: list[dict]
    orders: dict[str, list[dict]]
    payments: list[dict]
    truth: Truth

    def summary(self) -> str:
        """A few lines for humans: sizes, per-channel orders and the planted truth."""
        c = self.truth.counts()
        per_channel = ", ".join(f"{ch} {len(rows)}" for ch, rows in self.orders.items())
        defects = ", ".join(f"{k} {c[f'defect.{k}']}" for k in CHECK_IDS)
        invoices = ", ".join(f"{s} {c[f'invoice.{s}']}" for s in INVOICE_STATUSES)
        rules = ", ".join(f"{r} {c[f'rule.{r}']}" for r in LINE_RULES)
        total = sum(len(rows) for rows in self.orders.values())
        return "\n".join([
            f"customers {len(self.customers)}, products {len(self.products)}, "
            f"warehouses {len(self.warehouses)}, stock rows {len(self.stock)}",
            f"orders {total}: {per_channel}",
            f"clean {c['clean']}, defects {c['defects']}, rejected {c['rejected']}",
            f"defects by check: {defects}",
            f"line rules: {rules}; backordered orders {c['backordered']}",
            f"payments {len(self.payments)} (unmatched {c['unmatched_payments']}); "
            f"invoices {c['invoiced']}: {invoices}",
        ])


@dataclass(slots=True)
class _Draft:
    """An order before it is numbered; ``fate`` is "clean", "rejected" or a check id."""

    channel: str
    fate: str
    customer: dict
    customer_code: str | None
    customer_email: str | None
    ordered_at: datetime
    updated_at: datetime
    currency: str
    ship_region: str | None
    lines: list[dict]
    total: Decimal
    reason: str | None = None  # why a rejected order cannot be parsed
    original: _Draft | None = None  # what a not_duplicate copy copies
    external_id: str = ""
    order_no: str = ""

    def row(self) -> dict:
        return {
            "external_id": self.external_id,
            "order_no": self.order_no,
            "customer_code": self.customer_code,
            "customer_email": self.customer_email,
            "ordered_at": self.ordered_at,
            "updated_at": self.updated_at,
            "currency": self.currency,
            "ship_region": self.ship_region,
            "lines": self.lines,
            "total": self.total,
        }


def generate(
    seed: int = 7,
    orders: int = 5000,
    defect_rate: float = 0.04,
    duplicate_rate: float = 0.01,
    reject_rate: float = 0.004,
) -> Dataset:
    """Build the dataset for ``seed``; deterministic, stdlib only.

    ``defect_rate`` covers the six per-order defect kinds (at least one of each is planted),
    ``duplicate_rate`` the not_duplicate copies (at least one), ``reject_rate`` the unparseable
    records (at least three, one per channel). All of them are part of ``orders``.
    """
    if orders < MIN_ORDERS:
        raise ValueError(f"orders must be at least {MIN_ORDERS} to plant every defect kind")
    for name, rate in (("defect_rate", defect_rate), ("duplicate_rate", duplicate_rate),
                       ("reject_rate", reject_rate)):
        if not 0 <= rate <= 0.2:
            raise ValueError(f"{name} must be between 0 and 0.2, got {rate}")
    return _World(random.Random(seed), orders).build(defect_rate, duplicate_rate, reject_rate)


class _World:
    """The generation steps; one instance per ``generate`` call."""

    def __init__(self, rng: random.Random, orders: int) -> None:
        self.rng = rng
        self.n_orders = orders
        self.used_hex: set[str] = set()
        self.dup_keys: set[tuple] = set()  # every loaded order's duplicate key, kept unique
        self.seq = 0  # for unknown codes, emails and SKUs
        self.n_rejected = 0

    # --- build --------------------------------------------------------------------------------

    def build(self, defect_rate: float, duplicate_rate: float, reject_rate: float) -> Dataset:
        self._masters()
        n_dup = max(1, round(duplicate_rate * self.n_orders))
        drafts = self._orders(
            n_defects=max(len(_ROW_DEFECTS), round(defect_rate * self.n_orders)),
            n_rejected=max(len(CHANNELS), round(reject_rate * self.n_orders)),
            n_dup=n_dup,
        )
        for channel_drafts in drafts.values():
            # Ties before the copies exist, so a copy stays later than its original.
            _tie(channel_drafts, self.rng)
        self._duplicates(drafts, n_dup)
        self._number(drafts)
        stock = self._stock(drafts)
        truth = self._truth(drafts)
        payments = self._payments(drafts, truth)
        return Dataset(
            customers=self.customers,
            products=self.products,
            warehouses=[{"code": WAREHOUSE_CODES[r], "region": r} for r in REGIONS],
            stock=stock,
            orders={ch: [d.row() for d in drafts[ch]] for ch in CHANNELS},
            payments=payments,
            truth=truth,
        )

    # --- masters ------------------------------------------------------------------------------

    def _masters(self) -> None:
        rng = self.rng
        n_customers = max(20, self.n_orders // 10)
        regions = [REGIONS[i % len(REGIONS)] for i in range(n_customers)]
        rng.shuffle(regions)  # every region has customers, in no particular order
        master_at = BASE_DATE - timedelta(days=90)
        self.customers = []
        for i in range(n_customers):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            created = master_at + timedelta(minutes=i // 5)  # five customers per minute: ties
            self.customers.append({
                "external_id": self._object_id(created),
                "code": f"C{i + 1:05d}",
                "name": f"{first} {last} {i + 1}",
                "email": f"{first.lower()}.{last.lower()}{i + 1}@example.com",
                "region": regions[i],
                "group": rng.choice(_GROUPS),
                "credit_limit": Decimal(rng.randrange(50, 2001) * 100).quantize(CENT),
                "currency": "CNY",
                "updated_at": created,
            })
        self.code_to_customer = {c["code"]: c for c in self.customers}
        self.email_to_customer = {c["email"]: c for c in self.customers}

        n_products = max(20, min(200, self.n_orders // 5))
        self.products = []
        for i in range(n_products):
            cny = _cents(rng.randrange(1000, 200001))  # 10.00 .. 2000.00
            self.products.append({
                "external_id": str(200001 + i),
                "sku": f"SKU-{i + 1:05d}",
                "name": f"{rng.choice(_ADJ)} {rng.choice(_ITEMS)} {i + 1}",
                "prices": {"CNY": cny, "USD": (cny / USD_PER_CNY_DIVISOR).quantize(CENT)},
                "updated_at": BASE_DATE - timedelta(days=60) + timedelta(minutes=i // 4),
            })
        self.price = {p["sku"]: p["prices"] for p in self.products}

        # Where each SKU is stocked: everywhere (most), one warehouse only, or nowhere.
        skus = [p["sku"] for p in self.products]
        order = rng.sample(skus, len(skus))
        n_zero = max(1, n_products // 50)
        n_single = max(len(REGIONS), n_products // 8)
        self.stocked_in: dict[str, tuple[str, ...]] = {sku: REGIONS for sku in skus}
        for sku in order[:n_zero]:
            self.stocked_in[sku] = ()
        for j, sku in enumerate(order[n_zero:n_zero + n_single]):
            self.stocked_in[sku] = (REGIONS[j % len(REGIONS)],)
        self.all_skus = skus
        self.stocked_skus = [s for s in skus if self.stocked_in[s]]  # defective orders use these

    # --- orders -------------------------------------------------------------------------------

    def _orders(self, n_defects: int, n_rejected: int, n_dup: int) -> dict[str, list[_Draft]]:
        rng = self.rng
        sizes = {ch: int((self.n_orders * share).to_integral_value())
                 for ch, share in CHANNEL_SHARE.items()}
        sizes["kingdee"] = self.n_orders - sum(sizes.values())
        sizes["jiandaoyun"] -= n_dup  # the copies are jiandaoyun orders too
        fates = {ch: ["clean"] * n for ch, n in sizes.items()}

        # Rejected records are spread over the channels so each channel has some.
        for i, ch in enumerate(CHANNELS):
            share = n_rejected // len(CHANNELS) + (i < n_rejected % len(CHANNELS))
            for j in rng.sample(range(len(fates[ch])), share):
                fates[ch][j] = "rejected"
        free_slots = [(ch, j) for ch in CHANNELS for j, f in enumerate(fates[ch]) if f == "clean"]
        for i, (ch, j) in enumerate(rng.sample(free_slots, n_defects)):
            fates[ch][j] = _ROW_DEFECTS[i % len(_ROW_DEFECTS)]  # round-robin: every kind planted
        return {ch: [self._draft(ch, fate) for fate in fates[ch]] for ch in CHANNELS}

    def _draft(self, channel: str, fate: str) -> _Draft:
        rng = self.rng
        customer = rng.choice(self.customers)
        ordered_at = BASE_DATE - timedelta(seconds=rng.randrange(1, _WINDOW_S))
        ship_region: str | None = customer["region"]
        if fate == "clean" and rng.random() < 0.03:  # shipped elsewhere: truth follows ship_region
            ship_region = rng.choice([r for r in REGIONS if r != customer["region"]])
        currency = CHANNEL_CURRENCY[channel]
        # Defective and rejected orders stay off zero-stock SKUs: released, they would allocate.
        pool = self.all_skus if fate == "clean" else self.stocked_skus
        min_lines = 2 if fate == "qty_positive" else 1
        shopify = channel == "shopify"
        while True:
            n_lines = rng.randint(min_lines, 4)
            lines = [
                {"line_no": i + 1, "sku": sku, "qty": _QTY[rng.randint(1, 10)],
                 "unit_price": self.price[sku][currency]}
                for i, sku in enumerate(rng.sample(pool, n_lines))
            ]
            draft = _Draft(
                channel=channel, fate=fate, customer=customer,
                customer_code=None if shopify else customer["code"],
                customer_email=customer["email"] if shopify else None,
                ordered_at=ordered_at,
                updated_at=ordered_at + timedelta(seconds=rng.randrange(60, 900)),
                currency=currency, ship_region=ship_region, lines=lines, total=Decimal(0),
            )
            self._plant(draft)
            if fate == "rejected":
                return draft  # never loaded, so it has no duplicate key
            key = self._dup_key(draft)
            if key not in self.dup_keys:  # an accidental twin would also fail not_duplicate
                self.dup_keys.add(key)
                return draft

    def _plant(self, d: _Draft) -> None:
        """Apply the draft's defect (or unparseable value) and set its total."""
        rng = self.rng
        line = rng.choice(d.lines)
        self.seq += 1
        reason = None
        if d.fate == "customer_known":
            if d.channel == "shopify":
                d.customer_email = f"guest{self.seq}@example.net"  # master emails: example.com
            else:
                d.customer_code = f"C{900000 + self.seq}"  # master codes have five digits
        elif d.fate == "price_matches_list":
            listed = line["unit_price"]
            pct = rng.choice((rng.randint(106, 130), rng.randint(70, 94)))
            off = (listed * pct / HUNDRED).quantize(CENT)
            if abs(off - listed) * 20 < listed:  # rounding ate the gap on a tiny price
                off = (listed * Decimal("1.2")).quantize(CENT) + CENT
            line["unit_price"] = off
        elif d.fate == "qty_positive":
            line["qty"] = Decimal(rng.choice((0, -1)))
        elif d.fate == "sku_known":
            line["sku"] = f"SKU-9{self.seq % 10000:04d}"  # past any real SKU number
        elif d.fate == "currency_allowed":
            d.currency = "EUR"  # no EUR price list, so the price check has nothing to compare
            for ln in d.lines:
                ln["unit_price"] = self.price[ln["sku"]]["USD"]
        elif d.fate == "required_fields":
            d.ship_region = None
        d.total = sum((ln["qty"] * ln["unit_price"] for ln in d.lines), Decimal(0)).quantize(CENT)
        if d.fate == "qty_positive" and d.total <= 0:
            line["qty"] = Decimal(0)  # keep the total positive: only qty_positive may fail
            d.total = sum((ln["qty"] * ln["unit_price"] for ln in d.lines),
                          Decimal(0)).quantize(CENT)
        if d.fate == "rejected":
            j = d.lines.index(line)
            self.n_rejected += 1
            if self.n_rejected % 2:  # alternate the two unparseable shapes
                line["unit_price"], reason = "N/A", f"lines[{j}].unit_price: not a number: 'N/A'"
            else:
                line["qty"], reason = "two", f"lines[{j}].qty: not a number: 'two'"
        d.reason = reason

    def _dup_key(self, d: _Draft) -> tuple:
        if d.customer_email is not None and d.customer_code is None:
            known = self.email_to_customer.get(d.customer_email)
        else:
            known = self.code_to_customer.get(d.customer_code or "")
        who = known["code"] if known else ("unknown", d.customer_code, d.customer_email)
        lines = tuple(sorted((ln["sku"], ln["qty"], ln["unit_price"]) for ln in d.lines))
        return (who, d.ordered_at.date(), d.currency, d.total, lines)

    def _duplicates(self, drafts: dict[str, list[_Draft]], n_dup: int) -> None:
        rng = self.rng
        day = timedelta(days=1)

        def seconds_left(d: _Draft) -> int:  # until the end of its UTC day
            start = d.ordered_at.replace(hour=0, minute=0, second=0, microsecond=0)
            return int((start + day - d.ordered_at).total_seconds())

        candidates = [
            d for d in drafts["shopify"]
            if d.fate == "clean" and seconds_left(d) > 60
            and all(self.stocked_in[ln["sku"]] for ln in d.lines)  # the copy is defective
        ]
        for original in rng.sample(candidates, n_dup):
            ordered_at = original.ordered_at + timedelta(
                seconds=rng.randint(1, min(3600, seconds_left(original) - 1)))
            drafts["jiandaoyun"].append(_Draft(
                channel="jiandaoyun", fate="not_duplicate", customer=original.customer,
                customer_code=original.customer["code"], customer_email=None,
                ordered_at=ordered_at,
                updated_at=max(ordered_at, original.updated_at)
                + timedelta(seconds=rng.randrange(60, 600)),
                currency=original.currency,  # USD, with USD prices: a true copy
                ship_region=original.ship_region,
                lines=[dict(ln) for ln in original.lines], total=original.total,
                original=original,
            ))

    def _number(self, drafts: dict[str, list[_Draft]]) -> None:
        """Sort each channel by ordered_at and give out its order numbers and ids."""
        for ch in CHANNELS:
            drafts[ch].sort(key=lambda d: d.ordered_at)  # stable: ties keep draft order
            for i, d in enumerate(drafts[ch]):
                if ch == "shopify":
                    d.order_no, d.external_id = f"#{1001 + i}", str(5000000001 + i)
                elif ch == "jiandaoyun":
                    d.order_no, d.external_id = f"JDY-{i + 1:06d}", self._object_id(d.ordered_at)
                else:
                    d.order_no, d.external_id = f"XSDD{i + 1:06d}", str(100001 + i)

    def _object_id(self, at: datetime) -> str:
        """A 24-hex id like jiandaoyun's ``_id``: creation seconds, then random bits."""
        while True:
            oid = f"{int(at.timestamp()):08x}{self.rng.getrandbits(64):016x}"
            if oid not in self.used_hex:
                self.used_hex.add(oid)
                return oid

    # --- stock --------------------------------------------------------------------------------

    def _stock(self, drafts: dict[str, list[_Draft]]) -> list[dict]:
        # Ample = at least every order's demand for the SKU (even defective ones, in case ops
        # release them), so no allocation can starve another: the truth is order-independent.
        demand: Counter[str] = Counter()
        for channel_drafts in drafts.values():
            for d in channel_drafts:
                for ln in d.lines:
                    if isinstance(ln["qty"], Decimal) and ln["sku"] in self.price:
                        demand[ln["sku"]] += abs(int(ln["qty"]))
        rows = []
        stock_at = BASE_DATE - timedelta(days=1)
        for i, sku in enumerate(self.all_skus):
            ample = (demand[sku] // 100 + 6) * 100  # demand + 500..600
            for r in REGIONS:
                rows.append({
                    "external_id": str(300001 + len(rows)),
                    "sku": sku,
                    "warehouse": WAREHOUSE_CODES[r],
                    "qty": ample if r in self.stocked_in[sku] else 0,
                    "updated_at": stock_at + timedelta(minutes=i // 8),  # 32 rows per minute
                })
        return rows

    # --- truth --------------------------------------------------------------------------------

    def _truth(self, drafts: dict[str, list[_Draft]]) -> Truth:
        truth = Truth()
        for ch in CHANNELS:
            for d in drafts[ch]:
                key = (ch, d.external_id)
                if d.fate == "rejected":
                    truth.rejected[key] = d.reason or "unparseable"
                elif d.fate != "clean":
                    truth.defects[key] = d.fate
                    if d.original is not None:
                        truth.duplicates[key] = (d.original.channel, d.original.external_id)
                else:
                    truth.clean.add(key)
                    for ln in d.lines:
                        rule = self._rule(ln["sku"], d.ship_region)
                        truth.line_rules[(ch, d.external_id, ln["line_no"])] = rule
                        if rule == "backorder":
                            truth.backordered.add(key)
        return truth

    def _rule(self, sku: str, ship_region: str | None) -> str:
        regions = self.stocked_in[sku]
        if not regions:
            return "backorder"
        return "home_region" if ship_region in regions else "any_stock"

    # --- payments -----------------------------------------------------------------------------

    def _payments(self, drafts: dict[str, list[_Draft]], truth: Truth) -> list[dict]:
        rng = self.rng
        rows: list[dict] = []  # numbered after sorting by received_at

        def receipt(d: _Draft, amount: Decimal, after: int = 0) -> dict:
            received = d.ordered_at + timedelta(seconds=after or rng.randrange(3600, 10 * 86400))
            row = {"reference": d.order_no, "customer_code": d.customer["code"],
                   "amount": amount, "currency": d.currency, "received_at": received,
                   "matched": True}
            rows.append(row)
            return row

        invoiced = [d for ch in CHANNELS for d in drafts[ch]
                    if d.fate == "clean" and (ch, d.external_id) not in truth.backordered]
        statuses = [_status(rng.random()) for _ in invoiced]
        # A small dataset could miss a status by chance: take one from the most common status.
        tally = Counter(statuses)
        for missing in (s for s in INVOICE_STATUSES if not tally[s]):
            common = tally.most_common(1)[0][0]
            if tally[common] < 2:
                break  # fewer invoices than statuses
            j = rng.choice([i for i, s in enumerate(statuses) if s == common])
            statuses[j] = missing
            tally[common] -= 1
            tally[missing] += 1

        for d, status in zip(invoiced, statuses, strict=True):
            truth.invoice_status[(d.channel, d.external_id)] = status
            if status == "paid":
                if rng.random() < 0.1:  # two instalments: the matcher has to sum them
                    first = (d.total * rng.randint(30, 70) / HUNDRED).quantize(CENT)
                    early = receipt(d, first)
                    gap = int((early["received_at"] - d.ordered_at).total_seconds())
                    receipt(d, d.total - first, after=gap + rng.randrange(3600, 5 * 86400))
                else:
                    receipt(d, d.total)
            elif status == "part_paid":
                receipt(d, (d.total * rng.randint(40, 60) / HUNDRED).quantize(CENT))
            elif status == "over_paid":
                receipt(d, d.total + _cents(rng.randint(50, 1000)))

        order_nos = {d.order_no for ds in drafts.values() for d in ds}
        for i in range(max(3, round(len(rows) / 100))):  # ~1 % of receipts, at least 3
            while True:
                ref = _UNMATCHED_REFS[i % len(_UNMATCHED_REFS)].format(rng.randrange(100000))
                if ref not in order_nos:
                    break
            customer = rng.choice(self.customers)
            received = BASE_DATE - timedelta(seconds=rng.randrange(1, _WINDOW_S))
            rows.append({
                "reference": ref, "customer_code": customer["code"],
                "amount": _cents(rng.randrange(1000, 500001)),
                "currency": rng.choice(("CNY", "USD")), "received_at": received,
                "matched": False,
            })

        rows.sort(key=lambda row: row["received_at"])
        out = []
        for i, row in enumerate(rows):
            fid = str(500001 + i)
            if not row["matched"]:
                truth.unmatched_payments.add(fid)
            out.append({
                "external_id": fid,
                "bill_no": f"SKD{i + 1:06d}",
                "reference": row["reference"],
                "customer_code": row["customer_code"],
                "amount": row["amount"],
                "currency": row["currency"],
                "received_at": row["received_at"],
                "updated_at": row["received_at"] + timedelta(seconds=rng.randrange(60, 600)),
            })
        _tie(out, rng, key="updated_at")
        return out


def _status(r: float) -> str:
    """Invoice status for a uniform draw: 65 % paid, 10 % part, 5 % over, 20 % open."""
    if r < 0.65:
        return "paid"
    if r < 0.75:
        return "part_paid"
    return "over_paid" if r < 0.80 else "open"


def _cents(n: int) -> Decimal:
    """``n`` minor units as a two-decimal amount (``_cents(1050)`` is ``Decimal("10.50")``)."""
    return Decimal(n).scaleb(-2)


def _tie(records: list, rng: random.Random, key: str | None = None) -> None:
    """Make runs of 2-5 neighbours (and one run of 12) share their latest updated_at.

    Works on drafts (attribute) or row dicts (``key``); taking the max keeps updated_at >=
    each record's own creation time. Records are ordered by time first so neighbours are close.
    """
    get = (lambda r: r[key]) if key else (lambda r: r.updated_at)

    def put(r, value: datetime) -> None:
        if key:
            r[key] = value
        else:
            r.updated_at = value

    if len(records) < 2:
        return
    ordered = sorted(records, key=get)
    n_groups = max(2, len(ordered) // 50)
    step = len(ordered) // n_groups
    for g in range(n_groups):
        size = 12 if g == 0 else rng.randint(2, 5)  # one long run: likely to straddle a page
        group = ordered[g * step: g * step + min(size, max(step, 2))]
        latest = max(get(r) for r in group)
        for r in group:
            put(r, latest)
