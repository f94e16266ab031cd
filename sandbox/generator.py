"""A seeded, deterministic order-to-cash world for the sandbox fakes, and the truth it planted.

``generate(seed, orders, ..., channels=CHANNELS)`` builds masters (customers, products with CNY
and USD list prices, warehouses, stock), orders split over the order channels and receipts
(payments), and a ``Truth`` that says, for every order, where it must end up: clean (with the
allocation rule of every line and the invoice's payment status), defective (with the ONE check
that must fail) or rejected (unparseable).

Channels: the default ``("shopify", "jiandaoyun", "kingdee")`` gives exactly the dataset this
module always gave (the end-to-end tests and the demo pin it). Adding any of ``sap``, ``u8``,
``fxiaoke``, ``woocommerce``, ``files``, ``rest`` splits the orders over every listed channel (each
with its own ids and order numbers, see ``_number``); adding ``stripe`` (a payment system, not an
order channel) sends the e-commerce orders' payments (shopify, woocommerce) through Stripe, and
then every payment carries ``system`` ("stripe" or "kingdee"). Channels come out in the canonical
order of ``ORDER_CHANNELS`` whatever order they are given in.

Everything is derived from ``random.Random(seed)`` and the fixed ``BASE_DATE``, never ``now()``:
two calls with the same arguments give equal datasets. Stdlib only; money is ``Decimal``.

The rules the truth assumes (the checks and the allocator must agree with them):

- ``customer_known``: shopify and woocommerce orders resolve by ``customer_email``, the others by
  ``customer_code``.
- ``price_matches_list``: each line's unit price equals the list price of its SKU *in the order's
  currency*. The check only compares where such a list price exists: an unknown SKU or a currency
  without a price list (EUR) has nothing to compare with, so it fails ``sku_known`` or
  ``currency_allowed`` only, never this check as well.
- ``qty_positive``: every line's qty > 0. ``sku_known``: every SKU is in the product master.
- ``currency_allowed``: CNY or USD. ``required_fields``: ``ship_region`` is missing.
- ``not_duplicate``: two orders share (resolved customer, UTC order date, currency, total, sorted
  (sku, qty, unit_price) lines); the one ordered later is the duplicate. Every planted duplicate is
  a copy, in another channel, of an earlier clean order, ordered (and updated) strictly later on the
  same UTC date: jiandaoyun copies of shopify orders and, when both channels are listed, fxiaoke
  copies of woocommerce orders (``DUPLICATE_PAIRS``); no other two orders share that key.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

BASE_DATE = datetime(2026, 11, 1, tzinfo=UTC)
WINDOW = timedelta(days=30)  # orders fall in the 30 days before BASE_DATE
_WINDOW_S = int(WINDOW.total_seconds())
CHANNELS = ("shopify", "jiandaoyun", "kingdee")  # the default: what the demo and e2e pin
NEW_CHANNELS = ("sap", "u8", "fxiaoke", "woocommerce", "files", "rest")
ORDER_CHANNELS = CHANNELS + NEW_CHANNELS  # canonical order; the last listed takes the remainder
PAYMENT_SYSTEMS = ("stripe",)  # not order channels: where e-commerce payments go when listed
ALL_CHANNELS = ORDER_CHANNELS + PAYMENT_SYSTEMS
# Relative share of the orders; with the default channels 40/36/24 % as always.
CHANNEL_WEIGHT = {"shopify": 40, "jiandaoyun": 36, "kingdee": 24, "sap": 20, "u8": 16,
                  "fxiaoke": 16, "woocommerce": 24, "files": 12, "rest": 12}
CHANNEL_CURRENCY = {ch: "CNY" for ch in ORDER_CHANNELS} | {"shopify": "USD", "woocommerce": "USD"}
EMAIL_CHANNELS = frozenset({"shopify", "woocommerce"})  # name the buyer by e-mail, not by code
ECOMMERCE = frozenset({"shopify", "woocommerce"})  # paid through Stripe when it is listed
# (original's channel, copy's channel), planted in this order when both channels are listed.
DUPLICATE_PAIRS = (("shopify", "jiandaoyun"), ("woocommerce", "fxiaoke"))
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
# channels whose order number is also the record's key: (format, first number)
_NUMBER_FORMAT = {"sap": ("{:d}", 1000001), "woocommerce": ("{:d}", 20001),
                  "files": ("DIST-{:06d}", 1), "rest": ("MKT-{:06d}", 1)}


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
    Kingdee ids) so the fakes need not invent their own. With "stripe" among the channels every
    payment also carries ``system``: "kingdee" (a receipt: numeric id, ``bill_no`` "SKD...") or
    "stripe" (a charge: id "ch_...", ``bill_no`` None); without it there is no such key.
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
        systems = Counter(p["system"] for p in self.payments if "system" in p)
        # the per-system split only when payments name their system (stripe listed)
        split = "".join(f"{s} {n}, " for s, n in sorted(systems.items()))
        return "\n".join([
            f"customers {len(self.customers)}, products {len(self.products)}, "
            f"warehouses {len(self.warehouses)}, stock rows {len(self.stock)}",
            f"orders {total}: {per_channel}",
            f"clean {c['clean']}, defects {c['defects']}, rejected {c['rejected']}",
            f"defects by check: {defects}",
            f"line rules: {rules}; backordered orders {c['backordered']}",
            f"payments {len(self.payments)} ({split}unmatched {c['unmatched_payments']}); "
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
    channels: Iterable[str] = CHANNELS,
) -> Dataset:
    """Build the dataset for ``seed``; deterministic, stdlib only.

    ``defect_rate`` covers the six per-order defect kinds (at least one of each is planted),
    ``duplicate_rate`` the not_duplicate copies (at least one per duplicate pair),
    ``reject_rate`` the unparseable records (at least one per channel). All of them are part of
    ``orders``. ``channels``: order channels from ``ORDER_CHANNELS`` plus, optionally, "stripe".
    """
    listed = set(channels)
    unknown = sorted(listed - set(ALL_CHANNELS))
    if unknown:
        raise ValueError(f"unknown channel(s) {', '.join(unknown)}; known: {', '.join(ALL_CHANNELS)}")
    order_channels = tuple(ch for ch in ORDER_CHANNELS if ch in listed)
    if not order_channels:
        raise ValueError(f"channels need at least one order channel of {', '.join(ORDER_CHANNELS)}")
    # every channel needs room for a rejected record, a defect or two and clean orders
    minimum = max(MIN_ORDERS, 16 * len(order_channels))
    if orders < minimum:
        raise ValueError(f"orders must be at least {minimum} to plant every defect kind "
                         f"in {len(order_channels)} channel(s)")
    for name, rate in (("defect_rate", defect_rate), ("duplicate_rate", duplicate_rate),
                       ("reject_rate", reject_rate)):
        if not 0 <= rate <= 0.2:
            raise ValueError(f"{name} must be between 0 and 0.2, got {rate}")
    world = _World(random.Random(seed), orders, order_channels, stripe="stripe" in listed)
    return world.build(defect_rate, duplicate_rate, reject_rate)


class _World:
    """The generation steps; one instance per ``generate`` call."""

    def __init__(self, rng: random.Random, orders: int, channels: tuple[str, ...] = CHANNELS,
                 stripe: bool = False) -> None:
        self.rng = rng
        self.n_orders = orders
        self.channels = channels
        self.stripe = stripe
        # Only a non-default channel set may draw extra random numbers (spreading defects over
        # every channel): the default must reproduce the historical dataset exactly.
        self.extended = channels != CHANNELS
        self.pairs = [p for p in DUPLICATE_PAIRS if p[0] in channels and p[1] in channels]
        if not self.pairs and len(channels) > 1:
            self.pairs = [(channels[0], channels[1])]  # some copy must exist: any two channels
        self.used_hex: set[str] = set()
        self.dup_keys: set[tuple] = set()  # every loaded order's duplicate key, kept unique
        self.seq = 0  # for unknown codes, emails and SKUs
        self.n_rejected = 0

    # --- build --------------------------------------------------------------------------------

    def build(self, defect_rate: float, duplicate_rate: float, reject_rate: float) -> Dataset:
        self._masters()
        n_dup = max(len(self.pairs), round(duplicate_rate * self.n_orders)) if self.pairs else 0
        # copies per pair, the first pairs taking the remainder
        copies = [n_dup // len(self.pairs) + (i < n_dup % len(self.pairs))
                  for i in range(len(self.pairs))]
        drafts = self._orders(
            # at least one of each kind, and (many channels) enough to give each channel one
            n_defects=max(len(_ROW_DEFECTS), len(self.channels), round(defect_rate * self.n_orders)),
            n_rejected=max(len(self.channels), round(reject_rate * self.n_orders)),
            copies=copies,
        )
        for channel_drafts in drafts.values():
            # Ties before the copies exist, so a copy stays later than its original.
            _tie(channel_drafts, self.rng)
        for pair, n in zip(self.pairs, copies, strict=True):
            self._duplicates(drafts, pair, n)
        self._number(drafts)
        stock = self._stock(drafts)
        truth = self._truth(drafts)
        payments = self._payments(drafts, truth)
        return Dataset(
            customers=self.customers,
            products=self.products,
            warehouses=[{"code": WAREHOUSE_CODES[r], "region": r} for r in REGIONS],
            stock=stock,
            orders={ch: [d.row() for d in drafts[ch]] for ch in self.channels},
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

    def _orders(self, n_defects: int, n_rejected: int,
                copies: list[int]) -> dict[str, list[_Draft]]:
        rng = self.rng
        channels = self.channels
        weight = sum(CHANNEL_WEIGHT[ch] for ch in channels)
        # Exact decimal shares (the default: 40 % and 36 %, rounded half-even); the last channel
        # takes the remainder.
        sizes = {ch: int((self.n_orders * Decimal(CHANNEL_WEIGHT[ch]) / weight)
                         .to_integral_value()) for ch in channels[:-1]}
        sizes[channels[-1]] = self.n_orders - sum(sizes.values())
        for (_, copy_channel), n in zip(self.pairs, copies, strict=True):
            sizes[copy_channel] -= n  # the copies are that channel's orders too
        fates = {ch: ["clean"] * sizes[ch] for ch in channels}

        # Rejected records are spread over the channels so each channel has some.
        for i, ch in enumerate(channels):
            share = n_rejected // len(channels) + (i < n_rejected % len(channels))
            for j in rng.sample(range(len(fates[ch])), share):
                fates[ch][j] = "rejected"
        free_slots = [(ch, j) for ch in channels for j, f in enumerate(fates[ch]) if f == "clean"]
        for i, (ch, j) in enumerate(rng.sample(free_slots, n_defects)):
            fates[ch][j] = _ROW_DEFECTS[i % len(_ROW_DEFECTS)]  # round-robin: every kind planted
        if self.extended:
            self._spread_defects(fates)
        return {ch: [self._draft(ch, fate) for fate in fates[ch]] for ch in channels}

    def _spread_defects(self, fates: dict[str, list[str]]) -> None:
        """Move defects (keeping their kinds) so every channel has one, where there are enough:
        with many channels a random sample easily leaves a small channel without any."""
        def defects(ch: str) -> list[int]:
            return [j for j, f in enumerate(fates[ch]) if f in _ROW_DEFECTS]

        for ch in self.channels:
            if defects(ch):
                continue
            donor = max(self.channels, key=lambda c: len(defects(c)))
            clean = [j for j, f in enumerate(fates[ch]) if f == "clean"]
            if len(defects(donor)) < 2 or not clean:
                return  # too few defects to give every channel one
            j = defects(donor)[-1]
            fates[ch][self.rng.choice(clean)], fates[donor][j] = fates[donor][j], "clean"

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
        by_email = channel in EMAIL_CHANNELS
        while True:
            n_lines = rng.randint(min_lines, 4)
            lines = [
                {"line_no": i + 1, "sku": sku, "qty": _QTY[rng.randint(1, 10)],
                 "unit_price": self.price[sku][currency]}
                for i, sku in enumerate(rng.sample(pool, n_lines))
            ]
            draft = _Draft(
                channel=channel, fate=fate, customer=customer,
                customer_code=None if by_email else customer["code"],
                customer_email=customer["email"] if by_email else None,
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
            if d.channel in EMAIL_CHANNELS:
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

    def _duplicates(self, drafts: dict[str, list[_Draft]], pair: tuple[str, str],
                    n_dup: int) -> None:
        """Plant ``n_dup`` copies, in channel ``pair[1]``, of clean ``pair[0]`` orders."""
        rng = self.rng
        source, target = pair
        day = timedelta(days=1)

        def seconds_left(d: _Draft) -> int:  # until the end of its UTC day
            start = d.ordered_at.replace(hour=0, minute=0, second=0, microsecond=0)
            return int((start + day - d.ordered_at).total_seconds())

        candidates = [
            d for d in drafts[source]
            if d.fate == "clean" and seconds_left(d) > 60
            and all(self.stocked_in[ln["sku"]] for ln in d.lines)  # the copy is defective
        ]
        by_email = target in EMAIL_CHANNELS  # the copy names the customer the way its channel does
        # a tiny extended dataset may hold fewer candidates than copies: plant what fits
        for original in rng.sample(candidates, min(n_dup, len(candidates))):
            ordered_at = original.ordered_at + timedelta(
                seconds=rng.randint(1, min(3600, seconds_left(original) - 1)))
            drafts[target].append(_Draft(
                channel=target, fate="not_duplicate", customer=original.customer,
                customer_code=None if by_email else original.customer["code"],
                customer_email=original.customer["email"] if by_email else None,
                ordered_at=ordered_at,
                updated_at=max(ordered_at, original.updated_at)
                + timedelta(seconds=rng.randrange(60, 600)),
                currency=original.currency,  # e.g. USD, with USD prices: a true copy
                ship_region=original.ship_region,
                lines=[dict(ln) for ln in original.lines], total=original.total,
                original=original,
            ))

    def _number(self, drafts: dict[str, list[_Draft]]) -> None:
        """Sort each channel by ordered_at and give out its order numbers and ids.

        Order numbers are distinct across channels (payments quote them as references):
        shopify "#1001" / id 5000000001, jiandaoyun "JDY-000001" / 24-hex ``_id``, kingdee
        "XSDD000001" / FID 100001, sap SalesOrder "1000001" (number and key), u8 code
        "U8SO000001" / id 100001, fxiaoke "FX-000001" / 24-hex ``_id``, woocommerce number and
        id "20001", files "DIST-000001" (number and key), rest "MKT-000001" (number and key).
        """
        for ch in self.channels:
            drafts[ch].sort(key=lambda d: d.ordered_at)  # stable: ties keep draft order
            for i, d in enumerate(drafts[ch]):
                if ch == "shopify":
                    d.order_no, d.external_id = f"#{1001 + i}", str(5000000001 + i)
                elif ch == "jiandaoyun":
                    d.order_no, d.external_id = f"JDY-{i + 1:06d}", self._object_id(d.ordered_at)
                elif ch == "kingdee":
                    d.order_no, d.external_id = f"XSDD{i + 1:06d}", str(100001 + i)
                elif ch == "fxiaoke":
                    d.order_no, d.external_id = f"FX-{i + 1:06d}", self._object_id(d.ordered_at)
                elif ch == "u8":  # the voucher code is the number; the internal id is numeric
                    d.order_no, d.external_id = f"U8SO{i + 1:06d}", str(100001 + i)
                else:
                    fmt, first = _NUMBER_FORMAT[ch]
                    d.order_no = d.external_id = fmt.format(first + i)

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
        for ch in self.channels:
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
            if self.stripe:  # e-commerce orders are paid by card, the others by bank receipt
                row["system"] = "stripe" if d.channel in ECOMMERCE else "kingdee"
            rows.append(row)
            return row

        invoiced = [d for ch in self.channels for d in drafts[ch]
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
            row = {
                "reference": ref, "customer_code": customer["code"],
                "amount": _cents(rng.randrange(1000, 500001)),
                "currency": rng.choice(("CNY", "USD")), "received_at": received,
                "matched": False,
            }
            if self.stripe:  # unmatched payments in both systems
                row["system"] = "stripe" if i % 2 else "kingdee"
            rows.append(row)

        rows.sort(key=lambda row: row["received_at"])
        out = []
        numbered: Counter[str] = Counter()  # each system numbers its own payments
        for row in rows:
            system = row.get("system", "kingdee")
            i = numbered[system]
            numbered[system] += 1
            if system == "stripe":  # a charge: Stripe-style id, no bill number
                pid, bill_no = f"ch_{rng.getrandbits(96):024x}", None
            else:  # a Kingdee receipt (AR_RECEIVEBILL): numeric FID and FBillNo
                pid, bill_no = str(500001 + i), f"SKD{i + 1:06d}"
            if not row["matched"]:
                truth.unmatched_payments.add(pid)
            payment = {
                "external_id": pid,
                "bill_no": bill_no,
                "reference": row["reference"],
                "customer_code": row["customer_code"],
                "amount": row["amount"],
                "currency": row["currency"],
                "received_at": row["received_at"],
                "updated_at": row["received_at"] + timedelta(seconds=rng.randrange(60, 600)),
            }
            if "system" in row:
                payment["system"] = system
            out.append(payment)
        by_system: dict[str | None, list[dict]] = {}
        for payment in out:  # the default has no "system" key: one group, as always
            by_system.setdefault(payment.get("system"), []).append(payment)
        for group in by_system.values():  # ties within each system's stream
            _tie(group, rng, key="updated_at")
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
