"""Settlement: which payment pays which invoice, and why. Pure (no I/O), Decimal only.

``settle(invoices, payments, rules, rates)`` is a function of the *whole* book: it starts from a
clean slate every time, so the result does not depend on the order payments arrived in or on
how many runs saw them (``warehouse.reconcile`` writes only what differs from the last run).

The rules, in the order they apply (``ReconcileRules`` carries every number; orderhub.yaml's
``reconciliation:`` section declares them):

0. **Duplicates.** A payment is a *copy* of an earlier one (processing order, below) with the
   same payer, currency, signed amount, fee, kind and reference (null-safe; at least one of
   payer and reference known) received within ``duplicate_window_days`` calendar days (UTC);
   a cluster of copies all point at its first payment. A copy is judged a **duplicate** - never
   applied, kept as unapplied cash with ``duplicate_of`` and a reason, for a person to confirm -
   when it is a refund, when it has no usable reference (it could only be matched by amount,
   where a copy would take a second invoice of the same amount), or when every invoice it
   quotes is already settled when its turn comes (it could only over-pay). A copy that finds
   its invoice still open is an instalment and is applied: customers do pay 50 + 50 on one
   reference (the sandbox generator seeds exactly that), and the two cannot be told apart -
   so a cross-source double import of a *part* payment is not caught here; sources must keep
   one external id per bank transaction. Re-deliveries of the same record (same id, or same
   (source, external_id) in the warehouse) are one payment.
1. **by_reference.** The payer's reference names invoices: first the whole (stripped) text,
   else its tokens split on commas, semicolons and white space, in the order quoted
   (``"INV-1, INV-2"`` pays INV-1 first). A token names an invoice by ``invoice_no``, else by
   ``order_ref`` when exactly one invoice carries it (preferring the payment's currency);
   a token naming several invoices makes the payment *ambiguous* (not applied by reference).
   Payments are processed by (received_at, source, external_id) - never by surrogate id, so
   arrival order cannot matter. Each invoice takes cash up to its room
   (``amount + refunds against it - cash already taken``); what is left over stays unapplied
   on the payment, held on account of the last invoice it quotes (that invoice shows
   ``excess`` and status ``over_paid`` when the excess is above the amount tolerance).
   - *FX*: a payment in another currency than the invoices it quotes is converted at the rate
     for its received date (``Rates``); it settles them in full only when the converted amount
     is within ``fx_tolerance`` (relative) of their combined room, the difference recorded;
     otherwise (or without a rate) it stays unapplied with the reason. FX never part-pays.
   - *Refunds* (kind ``refund`` or a negative amount) are matched by reference only, to exactly
     one invoice in their currency. They reduce the cash applied to that invoice, but never
     below zero: refund applied = min(refunds, cash received). Because the invoice's room grows
     by its refunds, refunding an over-payment leaves the invoice paid, not over-paid.
2. **by_customer_amount.** Payments with no usable reference (none, unknown or ambiguous -
   an ambiguous one limits the candidates to the invoices it names), not refunds, whose payer
   is known: candidates are open invoices of the same customer whose
   outstanding equals the payment's gross (amount + declared fee) within ``amount_tolerance``
   (same currency) or within ``fx_tolerance`` after conversion. Applied only when the payment
   has exactly one candidate *and* no other payment claims that invoice in this tier;
   otherwise it stays unmatched with the candidates in the reason.
3. **by_amount_window.** The same, over every customer that does not contradict the payer
   (either side unknown, or equal), for invoices issued within ``date_window_days`` calendar
   days (either side) of the payment's received date.
   Tiers 2 and 3 see the book as it stood when the tier began (a batch, not a loop): the
   outcome of one payment never depends on another's position in the queue.
4. **Fees.** A payment's declared ``fee`` (gross = amount + fee) covers what its cash left open
   on the invoices it paid, in order. Then an invoice still short by more than the amount
   tolerance but at most ``fee_tolerance`` x its amount, that received cash and no excess, is
   settled by a bank fee recorded on its latest payment's match (``fee_account`` noted).

Never over-applied: for every invoice, cash applied (net of refunds) + fees <= amount, and for
every payment, applied + unapplied = received (signed; in the payment's currency).

Status of an invoice: ``invoice_status(amount, applied + fees + excess, amount_tolerance)``:
paid | part_paid | over_paid | open, as ``warehouse.reconcile`` always defined them.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from warehouse.money import ROUNDING, MoneyError, decimals, parse_money

TIERS = ("by_reference", "by_customer_amount", "by_amount_window")
REFUND = "refund"
PAYMENT_STATUSES = ("applied", "part_applied", "unapplied", "duplicate")
ZERO = Decimal("0.00")
_NIL, _ONE = Decimal(0), Decimal(1)  # bounds, as messages print them
RATE_PLACES = Decimal("0.00000001")  # fx_rates.rate / payment_matches.fx_rate are Numeric(18, 8)
_DIV = Context(prec=34, rounding=ROUND_HALF_EVEN)  # explicit: never the caller's global context
_SPLIT = re.compile(r"[,;\s]+")
_EPOCH = datetime(1970, 1, 1)  # sort key for a payment without received_at (naive: see _sort_key)
_MAX_LISTED = 5  # candidates named in a reason


# --- configuration ---------------------------------------------------------------------------


class RulesError(ValueError):
    """A bad ``reconciliation:`` setting; str() is one line naming ``reconciliation.<key>``."""


def _fail(key: str, problem: str) -> RulesError:
    return RulesError(f"reconciliation.{key}: {problem}")


def _decimal(key: str, value: Any, low: Decimal, high: Decimal | None = None) -> Decimal:
    # YAML reads 0.01 as a float; its repr is the text the user wrote, so str() is exact here
    text = repr(value) if isinstance(value, float) else value
    try:
        number = parse_money(text)
    except MoneyError:
        raise _fail(key, f"not a decimal number: {value!r}") from None
    if number < low or (high is not None and number >= high):
        bound = f">= {low}" + (f" and < {high}" if high is not None else "")
        raise _fail(key, f"must be {bound}, got {value!r}")
    return number


def _days(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(key, f"expected a whole number of days >= 0, got {value!r}")
    return value


def _currency(key: str, code: Any) -> str:
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code.strip()):
        raise _fail(key, f"expected ISO currency codes like USD/CNY, got {code!r}")
    return code.strip()


@dataclass(frozen=True)
class ReconcileRules:
    """Every number the matcher uses; ``from_config`` reads orderhub.yaml's ``reconciliation:``."""

    amount_tolerance: Decimal = Decimal("0.01")  # absolute: |owed - paid| within it is paid
    date_window_days: int = 30  # by_amount_window: |received date - issued date| <= this
    duplicate_window_days: int | None = 3  # None: no duplicate detection
    fee_tolerance: Decimal = Decimal("0")  # relative to the invoice amount; 0: infer no fees
    fee_account: str | None = None  # the ledger account bank fees are booked to (recorded)
    fx_tolerance: Decimal = Decimal("0.01")  # relative to the outstanding amount
    fx_rates: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)  # (USD, CNY): 7.1
    as_of: date | None = None  # aging date for the finance views; None: today (UTC)
    match_order: tuple[str, ...] = TIERS

    KEYS = ("amount_tolerance", "date_window_days", "duplicate_window_days", "fee_tolerance",
            "fee_account", "fx_tolerance", "fx_rates", "as_of", "match_order")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> ReconcileRules:
        """Validate the ``reconciliation:`` mapping; absent keys take the defaults above."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise RulesError("reconciliation: expected a mapping of settings")
        unknown = sorted(set(raw) - set(cls.KEYS), key=str)
        if unknown:
            raise _fail(str(unknown[0]), f"unknown key (known: {', '.join(cls.KEYS)})")
        kw: dict[str, Any] = {}
        if "amount_tolerance" in raw:
            kw["amount_tolerance"] = _decimal("amount_tolerance", raw["amount_tolerance"], _NIL)
        if "date_window_days" in raw:
            kw["date_window_days"] = _days("date_window_days", raw["date_window_days"])
        if "duplicate_window_days" in raw:
            value = raw["duplicate_window_days"]
            kw["duplicate_window_days"] = (None if value is None
                                           else _days("duplicate_window_days", value))
        if "fee_tolerance" in raw:
            kw["fee_tolerance"] = _decimal("fee_tolerance", raw["fee_tolerance"], _NIL, _ONE)
        if "fee_account" in raw:
            account = raw["fee_account"]
            if account is not None and (not isinstance(account, str | int) or isinstance(account, bool)
                                        or not str(account).strip()):
                raise _fail("fee_account", f"expected an account code, got {account!r}")
            kw["fee_account"] = None if account is None else str(account).strip()
        if "fx_tolerance" in raw:
            kw["fx_tolerance"] = _decimal("fx_tolerance", raw["fx_tolerance"], _NIL, _ONE)
        if "fx_rates" in raw:
            kw["fx_rates"] = _fx_rates(raw["fx_rates"])
        if "as_of" in raw:
            kw["as_of"] = _as_of(raw["as_of"])
        if "match_order" in raw:
            kw["match_order"] = _match_order(raw["match_order"])
        return cls(**kw)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings, for run summaries and match inputs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fx_rates":
                value = {f"{a}/{b}": str(r) for (a, b), r in sorted(value.items())}
            elif isinstance(value, Decimal | date):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _fx_rates(raw: Any) -> dict[tuple[str, str], Decimal]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail("fx_rates", 'expected a mapping like {"USD/CNY": "7.10"}')
    rates: dict[tuple[str, str], Decimal] = {}
    for pair, value in raw.items():
        key = f"fx_rates.{pair}"
        parts = str(pair).split("/")
        if len(parts) != 2:
            raise _fail(key, "expected BASE/QUOTE, e.g. USD/CNY (1 USD = rate CNY)")
        base, quote = (_currency(key, p) for p in parts)
        if base == quote:
            raise _fail(key, "a currency needs no rate to itself")
        rate = _decimal(key, value, _NIL)
        if rate == 0:
            raise _fail(key, "a rate must be > 0")
        rates[(base, quote)] = rate.quantize(RATE_PLACES)
    return rates


def _as_of(raw: Any) -> date | None:
    if raw is None or isinstance(raw, date) and not isinstance(raw, datetime):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw.strip())
        except ValueError:
            pass
    raise _fail("as_of", f"expected a date YYYY-MM-DD (or null for today), got {raw!r}")


def _match_order(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not raw:
        raise _fail("match_order", f"expected a list of tiers from {', '.join(TIERS)}")
    for tier in raw:
        if tier not in TIERS:
            raise _fail("match_order", f"unknown tier {tier!r} (known: {', '.join(TIERS)})")
    if len(set(raw)) != len(raw):
        raise _fail("match_order", "a tier is listed twice")
    return tuple(raw)


# --- inputs and outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invoice:
    id: int
    invoice_no: str
    order_ref: str | None
    customer: str | None
    currency: str
    amount: Decimal
    issued_at: datetime | None


@dataclass(frozen=True, slots=True)
class Payment:
    id: int
    source: str
    external_id: str
    reference: str | None
    customer: str | None
    currency: str
    amount: Decimal  # as the source sent it; a refund may come positive (kind) or negative
    received_at: datetime | None
    fee: Decimal | None = None  # bank fee the source says was deducted (None: not stated)
    kind: str | None = None  # payment (None too) | refund

    @property
    def is_refund(self) -> bool:
        return self.kind == REFUND or self.amount < 0

    @property
    def value(self) -> Decimal:
        """Signed cash: money in is positive, a refund (money out) negative."""
        return -abs(self.amount) if self.is_refund else self.amount

    @property
    def gross(self) -> Decimal:
        return self.amount + (self.fee or ZERO)


@dataclass(frozen=True, slots=True)
class FxRate:
    """1 ``base`` = ``rate`` ``quote`` from ``day`` on (until a later row)."""

    base: str
    quote: str
    day: date
    rate: Decimal


class Rates:
    """Rate lookup: the ``fx_rates`` table (latest day <= the payment's date, direct or inverse)
    first, then the fixed ``reconciliation.fx_rates`` of orderhub.yaml (direct or inverse)."""

    def __init__(self, table: Iterable[FxRate] = (), fixed: Mapping[tuple[str, str], Decimal] | None = None):
        self._table: dict[tuple[str, str], list[tuple[date, Decimal]]] = defaultdict(list)
        for r in table:
            self._table[(r.base, r.quote)].append((r.day, r.rate))
        for rows in self._table.values():
            rows.sort()
        self._fixed = dict(fixed or {})

    def _latest(self, pair: tuple[str, str], day: date | None) -> tuple[date, Decimal] | None:
        rows = self._table.get(pair)
        if not rows:
            return None
        usable = [r for r in rows if day is None or r[0] <= day]
        return usable[-1] if usable else None

    def rate(self, base: str, quote: str, day: date | None) -> tuple[Decimal, str] | None:
        """(rate, where it came from) converting ``base`` into ``quote``, or None."""
        direct, inverse = self._latest((base, quote), day), self._latest((quote, base), day)
        if direct and (not inverse or direct[0] >= inverse[0]):
            return direct[1], f"fx_rates {base}/{quote} {direct[0]}"
        if inverse:
            return _invert(inverse[1]), f"fx_rates 1/({quote}/{base} {inverse[0]})"
        if (base, quote) in self._fixed:
            return self._fixed[(base, quote)], f"config {base}/{quote}"
        if (quote, base) in self._fixed:
            return _invert(self._fixed[(quote, base)]), f"config 1/({quote}/{base})"
        return None


def _invert(rate: Decimal) -> Decimal:
    return _DIV.divide(Decimal(1), rate).quantize(RATE_PLACES)


@dataclass(slots=True)
class Allocation:
    """One (payment, invoice) decision: a payment_matches row."""

    payment_id: int
    invoice_id: int
    amount: Decimal  # the payment's cash it accounts for, in the payment's currency (signed)
    applied: Decimal  # what the invoice is credited, in the invoice's currency (signed)
    fee: Decimal  # bank fee settling the invoice, invoice currency
    rule: str
    reason: str
    fx_rate: Decimal | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    payment_id: int
    currency: str
    received: Decimal  # signed
    applied: Decimal
    unapplied: Decimal
    status: str  # applied | part_applied | unapplied | duplicate
    reason: str
    duplicate_of: int | None
    on_account_invoice_id: int | None  # the invoice its unapplied excess is held against


@dataclass(frozen=True, slots=True)
class InvoiceOutcome:
    invoice_id: int
    invoiced: Decimal
    applied: Decimal  # cash, net of refunds
    fees: Decimal
    excess: Decimal  # unapplied over-payment held on account of it
    outstanding: Decimal  # invoiced - applied - fees, never negative
    status: str


@dataclass
class Settlement:
    allocations: list[Allocation]
    payments: dict[int, PaymentOutcome]
    invoices: dict[int, InvoiceOutcome]


def invoice_status(invoiced: Decimal, applied: Decimal, tolerance: Decimal) -> str:
    """paid | part_paid | over_paid | open, for an invoice and the sum credited to it.

    paid: |invoiced - applied| <= tolerance (also a zero invoice with nothing applied);
    over_paid: applied > invoiced + tolerance; part_paid: something applied, but less than
    invoiced - tolerance; open: nothing (or a net negative) applied.
    """
    if abs(invoiced - applied) <= tolerance:
        return "paid"
    if applied > invoiced + tolerance:
        return "over_paid"
    if applied > 0:
        return "part_paid"
    return "open"


# --- the matcher ---------------------------------------------------------------------------------


def _money(amount: Decimal, currency: str) -> Decimal:
    """Round a computed amount to the currency's decimals (at most 2: the MONEY column scale)."""
    places = min(decimals(currency), 2)
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUNDING)


def _fmt(amount: Decimal, currency: str) -> str:
    return f"{amount} {currency}"


def _utc(moment: datetime) -> datetime:
    """Naive UTC: aware values converted, naive ones taken as UTC (as the warehouse stores)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _sort_key(p: Payment) -> tuple[datetime, str, str]:
    return (_utc(p.received_at) if p.received_at else _EPOCH, p.source, p.external_id)


def _day(moment: datetime | None) -> date | None:
    """The UTC calendar date: windows count calendar days in UTC, like the views."""
    return _utc(moment).date() if moment else None


def _names(invoices: Iterable[Invoice]) -> str:
    nos = sorted(i.invoice_no for i in invoices)
    more = f" and {len(nos) - _MAX_LISTED} more" if len(nos) > _MAX_LISTED else ""
    return ", ".join(nos[:_MAX_LISTED]) + more


@dataclass
class _Ref:
    """What a payment's reference resolved to."""

    state: str  # none | unknown | ambiguous | ok
    invoices: list[Invoice]
    note: str


class _Book:
    """The running state while one settlement is computed."""

    def __init__(self, invoices: Sequence[Invoice], rules: ReconcileRules, rates: Rates):
        self.rules = rules
        self.rates = rates
        self.invoices = {i.id: i for i in invoices}
        self.by_no = {i.invoice_no: i for i in invoices}
        self.by_ref: dict[str, list[Invoice]] = defaultdict(list)
        for i in invoices:
            if i.order_ref:
                self.by_ref[i.order_ref].append(i)
        self.cash: dict[int, Decimal] = defaultdict(lambda: ZERO)  # positive cash taken
        self.refunds_due: dict[int, Decimal] = defaultdict(lambda: ZERO)  # refunds quoting it
        self.refunded: dict[int, Decimal] = defaultdict(lambda: ZERO)  # refunds applied
        self.refunds: dict[int, list[tuple[Payment, str]]] = defaultdict(list)
        self.fees: dict[int, Decimal] = defaultdict(lambda: ZERO)
        self.excess: dict[int, Decimal] = defaultdict(lambda: ZERO)
        self.rows: dict[tuple[int, int], Allocation] = {}
        self.notes: dict[int, list[str]] = defaultdict(list)
        self.on_account: dict[int, int] = {}
        self.done: set[int] = set()  # payments a tier has dealt with
        self.copies: dict[int, Payment] = {}  # payment -> the earlier one it may duplicate
        self.duplicates: dict[int, Payment] = {}  # ... and those judged duplicates

    def flag_duplicate(self, p: Payment, original: Payment) -> None:
        self.duplicates[p.id] = original
        self.done.add(p.id)
        self.notes[p.id].append(
            f"duplicate of {original.source}/{original.external_id}: same payer, amount and "
            f"reference within {self.rules.duplicate_window_days} days; not applied")

    # -- invoice state --

    def room(self, inv: Invoice) -> Decimal:
        """Cash the invoice can still take: its amount plus refunds quoting it, less the cash
        and fees already settling it."""
        return inv.amount + self.refunds_due[inv.id] - self.cash[inv.id] - self.fees[inv.id]

    def outstanding(self, inv: Invoice) -> Decimal:
        return inv.amount - (self.cash[inv.id] - self.refunded[inv.id]) - self.fees[inv.id]

    def is_open(self, inv: Invoice) -> bool:
        return self.outstanding(inv) > self.rules.amount_tolerance and not self.excess[inv.id]

    # -- writing decisions --

    def add(self, p: Payment, inv: Invoice, amount: Decimal, applied: Decimal, rule: str,
            reason: str, fx_rate: Decimal | None = None, **inputs: Any) -> Allocation:
        row = Allocation(p.id, inv.id, amount, applied, ZERO, rule, reason, fx_rate,
                         {k: _jsonable(v) for k, v in inputs.items()})
        self.rows[(p.id, inv.id)] = row
        return row

    def hold(self, p: Payment, inv: Invoice, amount: Decimal) -> None:
        """Leave ``amount`` of ``p`` unapplied, on account of ``inv`` (an explicit over-payment)."""
        self.excess[inv.id] += amount
        self.on_account[p.id] = inv.id
        self.notes[p.id].append(f"{_fmt(amount, p.currency)} over {inv.invoice_no}: "
                                "held on account (not applied)")

    # -- references --

    def resolve(self, p: Payment) -> _Ref:
        text = (p.reference or "").strip()
        if not text:
            return _Ref("none", [], "no reference")
        whole = self._token(text, p.currency)
        if whole[0] != "unknown":
            return _Ref(whole[0], whole[1], whole[2])
        tokens = [t for t in _SPLIT.split(text) if t]
        found: list[Invoice] = []
        for token in tokens if len(tokens) > 1 else []:
            state, invs, note = self._token(token, p.currency)
            if state == "ambiguous":
                return _Ref("ambiguous", invs, note)
            if state == "ok" and invs[0] not in found:
                found.append(invs[0])
        if found:
            return _Ref("ok", found, f"reference {text!r} quotes {', '.join(i.invoice_no for i in found)}")
        return _Ref("unknown", [], f"reference {text!r} names no invoice")

    def _token(self, token: str, currency: str) -> tuple[str, list[Invoice], str]:
        if token in self.by_no:
            return "ok", [self.by_no[token]], f"reference {token!r} = invoice_no"
        named = self.by_ref.get(token, [])
        if len(named) > 1:  # an order number several channels share: prefer the payment's currency
            named = [i for i in named if i.currency == currency] or named
        if len(named) == 1:
            return "ok", named, f"reference {token!r} = order_ref of {named[0].invoice_no}"
        if named:
            return "ambiguous", named, f"reference {token!r} names {len(named)} invoices ({_names(named)})"
        return "unknown", [], ""

    # -- FX --

    def convert(self, p: Payment, currency: str, amount: Decimal) -> tuple[Decimal, Decimal, str] | None:
        found = self.rates.rate(p.currency, currency, _day(p.received_at))
        if found is None:
            return None
        rate, where = found
        return _money(amount * rate, currency), rate, where

    def fx_close(self, converted: Decimal, owed: Decimal) -> bool:
        return abs(converted - owed) <= self.rules.fx_tolerance * owed

    def amount_close(self, p: Payment, inv: Invoice, owed: Decimal) -> bool:
        if p.currency == inv.currency:
            return abs(p.gross - owed) <= self.rules.amount_tolerance
        conv = self.convert(p, inv.currency, p.gross)
        return conv is not None and self.fx_close(conv[0], owed)


def _jsonable(value: Any) -> Any:
    """Match inputs are stored as JSON: Decimals and dates as strings, so a value read back
    compares equal to the one computed (a rerun must see no change)."""
    if isinstance(value, Decimal | date):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _duplicates(payments: Sequence[Payment], window: int | None) -> dict[int, Payment]:
    """payment id -> the earlier payment it duplicates (see rule 0)."""
    if window is None:
        return {}
    groups: dict[tuple[Any, ...], list[Payment]] = defaultdict(list)
    for p in payments:
        ref = (p.reference or "").strip() or None
        if p.received_at is None or (p.customer is None and ref is None):
            continue  # nothing to tell a second payment from a copy by
        groups[(p.customer, p.currency, p.value, p.fee or ZERO, p.is_refund, ref)].append(p)
    out: dict[int, Payment] = {}
    for group in groups.values():
        original: Payment | None = None
        for p in sorted(group, key=_sort_key):
            if original is not None and _days_apart(original, p) <= window:
                out[p.id] = original
            else:
                original = p
    return out


def _days_apart(a: Payment, b: Payment) -> int:
    first, second = _day(a.received_at), _day(b.received_at)
    assert first is not None and second is not None
    return abs((second - first).days)


def settle(
    invoices: Iterable[Invoice],
    payments: Iterable[Payment],
    rules: ReconcileRules,
    rates: Rates | None = None,
) -> Settlement:
    """Settle the whole book: every allocation, and the outcome of every payment and invoice."""
    invs = sorted({i.id: i for i in invoices}.values(), key=lambda i: i.invoice_no)
    pays = sorted({p.id: p for p in payments}.values(), key=_sort_key)  # a re-delivery is one payment
    book = _Book(invs, rules, rates or Rates(fixed=rules.fx_rates))
    book.copies = _duplicates(pays, rules.duplicate_window_days)
    tol = rules.amount_tolerance

    for p in pays:
        if p.kind not in (None, "payment", REFUND):
            book.notes[p.id].append(f"kind {p.kind!r} is not matched")
            book.done.add(p.id)
        elif p.amount == 0:
            book.notes[p.id].append("zero amount")
            book.done.add(p.id)
    refs = {p.id: book.resolve(p) for p in pays if p.id not in book.done}
    by_ref = "by_reference" in rules.match_order
    for p in pays:
        original = book.copies.get(p.id)
        if original and p.id not in book.done and (p.is_refund or not by_ref or refs[p.id].state != "ok"):
            book.flag_duplicate(p, original)  # else by_reference decides: see _pay_in_order
    for tier in rules.match_order:
        if tier == "by_reference":
            _by_reference(book, pays, refs)
        else:
            _by_amount(book, pays, refs, tier)
    _refunds(book)
    for p in pays:
        if p.id not in book.done:  # no tier took it: say what its reference was
            book.notes[p.id].insert(0, refs[p.id].note)
            if p.is_refund:
                book.notes[p.id].append("refunds are matched by reference only")
    _fees(book, pays)

    rows_of: dict[int, list[Allocation]] = defaultdict(list)
    for a in book.rows.values():  # in the order they were decided: content order, not ids
        rows_of[a.payment_id].append(a)
    pay_out: dict[int, PaymentOutcome] = {}
    for p in pays:
        rows = rows_of[p.id]
        applied = sum((a.amount for a in rows), ZERO)
        unapplied = p.value - applied
        status = ("duplicate" if p.id in book.duplicates else "unapplied" if applied == 0
                  else "applied" if unapplied == 0 else "part_applied")
        notes = book.notes[p.id]
        if rows:
            applied_to = ", ".join(f"{book.invoices[a.invoice_id].invoice_no} {a.applied}" for a in rows)
            notes = [f"{rows[0].rule}: {applied_to}", *notes]
        pay_out[p.id] = PaymentOutcome(
            p.id, p.currency, p.value, applied, unapplied, status, "; ".join(notes),
            book.duplicates[p.id].id if p.id in book.duplicates else None, book.on_account.get(p.id))
    inv_out: dict[int, InvoiceOutcome] = {}
    for inv in invs:
        applied = book.cash[inv.id] - book.refunded[inv.id]
        fees, excess = book.fees[inv.id], book.excess[inv.id]
        inv_out[inv.id] = InvoiceOutcome(
            inv.id, inv.amount, applied, fees, excess, inv.amount - applied - fees,
            invoice_status(inv.amount, applied + fees + excess, tol))
    allocations = sorted(book.rows.values(), key=lambda a: (a.payment_id, a.invoice_id))
    return Settlement(allocations, pay_out, inv_out)


def _by_reference(book: _Book, pays: Sequence[Payment], refs: Mapping[int, _Ref]) -> None:
    todo = [p for p in pays if p.id not in book.done and refs[p.id].state == "ok"]
    # refunds first widen their invoice's room, so the cash they give back is not "excess"
    for p in (p for p in todo if p.is_refund):
        book.done.add(p.id)
        invs = refs[p.id].invoices
        if len(invs) != 1:
            book.notes[p.id].append(f"refund quotes {len(invs)} invoices ({_names(invs)}): "
                                    "split it to match")
        elif invs[0].currency != p.currency:
            book.notes[p.id].append(f"refund in {p.currency} for {invs[0].invoice_no} in "
                                    f"{invs[0].currency}: not matched")
        else:
            book.refunds_due[invs[0].id] += -p.value
            book.refunds[invs[0].id].append((p, refs[p.id].note))

    for p in (p for p in todo if not p.is_refund):
        book.done.add(p.id)
        ref = refs[p.id]
        currencies = {i.currency for i in ref.invoices}
        if len(currencies) > 1:
            book.notes[p.id].append(f"{ref.note}: invoices in {', '.join(sorted(currencies))}; "
                                    "not applied")
        elif currencies == {p.currency}:
            _pay_in_order(book, p, ref)
        else:
            _pay_fx(book, p, ref)


def _refunds(book: _Book) -> None:
    """After every tier: a refund returns cash its invoice received, never more."""
    for inv_id, rs in book.refunds.items():
        inv = book.invoices[inv_id]
        left = book.cash[inv_id]
        for p, note in sorted(rs, key=lambda r: _sort_key(r[0])):
            take = min(-p.value, left)
            left -= take
            if take > 0:
                book.refunded[inv_id] += take
                book.add(p, inv, -take, -take, REFUND, f"{note}; refund against {inv.invoice_no}",
                         reference=p.reference)
            if take < -p.value:
                book.notes[p.id].append(
                    f"{_fmt(-p.value - take, p.currency)} exceeds the cash {inv.invoice_no} "
                    "received: not applied")


def _pay_in_order(book: _Book, p: Payment, ref: _Ref) -> None:
    original = book.copies.get(p.id)
    if original and all(book.room(inv) <= book.rules.amount_tolerance for inv in ref.invoices):
        # a copy that would only over-pay is a duplicate; one that finds its invoice still open
        # is an instalment (customers do pay 50 + 50 on one reference)
        book.flag_duplicate(p, original)
        return
    remaining = p.value
    for inv in ref.invoices:
        take = min(remaining, max(book.room(inv), ZERO))
        if take <= 0:
            continue
        owed = book.room(inv)
        book.cash[inv.id] += take
        remaining -= take
        book.add(p, inv, take, take, "by_reference",
                 f"{ref.note}; {_fmt(take, p.currency)} of {_fmt(owed, inv.currency)} open",
                 reference=p.reference, quoted=[i.invoice_no for i in ref.invoices], open=owed)
    if remaining == p.value:
        book.notes[p.id].append(f"{ref.note}: nothing left open")
    if remaining > 0:
        book.hold(p, ref.invoices[-1], remaining)


def _pay_fx(book: _Book, p: Payment, ref: _Ref) -> None:
    cur = ref.invoices[0].currency
    owed = {inv.id: max(book.room(inv), ZERO) for inv in ref.invoices}
    need = sum(owed.values(), ZERO)
    original = book.copies.get(p.id)
    if original and need <= book.rules.amount_tolerance:
        book.flag_duplicate(p, original)
        return
    conv = book.convert(p, cur, p.gross)
    if conv is None:
        book.notes[p.id].append(f"{ref.note}: no {p.currency}->{cur} rate for "
                                f"{_day(p.received_at)}; not applied")
        return
    converted, rate, where = conv
    if need <= 0 or not book.fx_close(converted, need):
        book.notes[p.id].append(
            f"{ref.note}: {_fmt(p.gross, p.currency)} at {rate} ({where}) = {_fmt(converted, cur)}, "
            f"open {_fmt(need, cur)}: outside fx tolerance {book.rules.fx_tolerance}; not applied")
        return
    _settle_fx(book, p, [i for i in ref.invoices if owed[i.id] > 0], owed, rate, where, converted,
               "by_reference", ref.note)


def _settle_fx(book: _Book, p: Payment, invs: Sequence[Invoice], owed: Mapping[int, Decimal],
               rate: Decimal, where: str, converted: Decimal, rule: str, why: str) -> None:
    """Settle ``invs`` in full with foreign-currency ``p``: each row's cash is the owed amount
    converted back (the last takes the rest, so the rows add up to the payment exactly)."""
    cur = invs[0].currency
    fee_inv = _money((p.fee or ZERO) * rate, cur)
    need = sum((owed[i.id] for i in invs), ZERO)
    cash_left = p.value
    for n, inv in enumerate(invs):
        last = n == len(invs) - 1
        cash = cash_left if last else min(cash_left, _money(_DIV.divide(owed[inv.id], rate), p.currency))
        cash_left -= cash
        # a fee settles the invoice's own amount, never room that only refunds opened
        uncovered = max(inv.amount - book.cash[inv.id] - book.fees[inv.id], ZERO)
        fee = min(fee_inv, owed[inv.id], uncovered) if last else ZERO
        applied = owed[inv.id] - fee
        book.cash[inv.id] += applied
        book.fees[inv.id] += fee
        row = book.add(
            p, inv, cash, applied, rule,
            f"{why}; {_fmt(p.gross, p.currency)} at {rate} = {_fmt(converted, cur)} settles "
            f"{_fmt(need, cur)} within fx tolerance {book.rules.fx_tolerance} "
            f"(difference {_fmt(converted - need, cur)})",
            rate, rate_source=where, converted=converted, open=need,
            fx_difference=converted - need)
        row.fee = fee


class _OpenIndex:
    """Open invoices by currency, sorted by what they still owe: a payment's candidates are a
    bisected range, not a scan of the whole book."""

    def __init__(self, book: _Book):
        self.by_currency: dict[str, list[tuple[Decimal, str, Invoice]]] = defaultdict(list)
        for inv in book.invoices.values():
            if book.is_open(inv):
                self.by_currency[inv.currency].append((book.outstanding(inv), inv.invoice_no, inv))
        for rows in self.by_currency.values():
            rows.sort(key=lambda r: (r[0], r[1]))
        self.keys = {cur: [r[0] for r in rows] for cur, rows in self.by_currency.items()}

    def near(self, book: _Book, p: Payment) -> list[tuple[Invoice, Decimal]]:
        """Open invoices whose outstanding the payment's gross matches (same currency within the
        amount tolerance, another currency within the fx tolerance after conversion)."""
        out: list[tuple[Invoice, Decimal]] = []
        for cur, rows in self.by_currency.items():
            if cur == p.currency:
                low = p.gross - book.rules.amount_tolerance
                high = p.gross + book.rules.amount_tolerance
            else:
                conv = book.convert(p, cur, p.gross)
                if conv is None:
                    continue
                # |conv - owed| <= t * owed  <=>  conv / (1 + t) <= owed <= conv / (1 - t)
                t = book.rules.fx_tolerance
                low = _DIV.divide(conv[0], 1 + t) - Decimal("0.01")
                high = _DIV.divide(conv[0], 1 - t) + Decimal("0.01")
            keys = self.keys[cur]
            for owed, _, inv in rows[bisect_left(keys, low):bisect_right(keys, high)]:
                if book.amount_close(p, inv, owed):  # the exact test; the range is a superset
                    out.append((inv, owed))
        return out


def _by_amount(book: _Book, pays: Sequence[Payment], refs: Mapping[int, _Ref], tier: str) -> None:
    rules = book.rules
    # a quoted reference is an instruction: while by_reference is on, it alone decides
    by_ref = "by_reference" in rules.match_order
    todo = [p for p in pays if p.id not in book.done and not p.is_refund
            and (refs[p.id].state != "ok" or not by_ref)]
    if tier == "by_customer_amount":
        todo = [p for p in todo if p.customer is not None]
        label = "customer and amount"
    else:
        label = f"amount within {rules.date_window_days} days"
    if not todo:
        return
    index = _OpenIndex(book)  # the book as the tier starts: the same for every payment

    def fits(p: Payment, inv: Invoice) -> bool:
        if tier == "by_customer_amount":
            return inv.customer == p.customer
        if p.customer is not None and inv.customer is not None and inv.customer != p.customer:
            return False  # a known payer never settles another customer's invoice by amount
        issued, received = _day(inv.issued_at), _day(p.received_at)
        if issued is None or received is None:
            return False
        return abs((received - issued).days) <= rules.date_window_days

    claims: dict[int, list[Payment]] = defaultdict(list)
    choice: dict[int, tuple[Invoice, Decimal]] = {}
    for p in todo:
        cands = [(inv, owed) for inv, owed in index.near(book, p) if fits(p, inv)]
        if refs[p.id].state == "ambiguous":  # the reference narrowed it to these: pick among them
            cands = [(inv, owed) for inv, owed in cands if inv in refs[p.id].invoices]
        if len(cands) == 1:
            choice[p.id] = cands[0]
            claims[cands[0][0].id].append(p)
        elif cands:
            book.notes[p.id].append(f"{tier}: {len(cands)} invoices match by {label} "
                                    f"({_names(i for i, _ in cands)}); left for a person")
        else:
            book.notes[p.id].append(f"{tier}: no open invoice matches by {label}")
    for claimants in claims.values():
        inv, owed = choice[claimants[0].id]
        if len(claimants) > 1:  # which one pays it is a guess: leave all to a person
            for p in claimants:
                book.notes[p.id].append(
                    f"{tier}: {len(claimants)} payments match {inv.invoice_no}; left for a person")
            continue
        p = claimants[0]
        book.done.add(p.id)
        basis = (f"customer {p.customer}" if tier == "by_customer_amount"
                 else f"issued {_day(inv.issued_at)}, received {_day(p.received_at)}")
        why = f"{tier}: the only open invoice owing {_fmt(owed, inv.currency)} ({basis})"
        if p.currency == inv.currency:
            take = min(p.value, owed)
            book.cash[inv.id] += take
            book.add(p, inv, take, take, tier, why, open=owed, customer=p.customer,
                     reference=p.reference)
            if p.value > take:
                book.hold(p, inv, p.value - take)
        else:
            conv = book.convert(p, inv.currency, p.gross)
            assert conv is not None  # near() converted it already
            _settle_fx(book, p, [inv], {inv.id: owed}, conv[1], conv[2], conv[0], tier, why)


def _fees(book: _Book, pays: Sequence[Payment]) -> None:
    rules = book.rules
    rows_of: dict[int, list[Allocation]] = defaultdict(list)
    for row in book.rows.values():  # insertion order: the order the payment quoted its invoices
        if row.amount > 0:
            rows_of[row.payment_id].append(row)
    # declared fees: the bank said so; they cover what the payment's cash left open, in order
    for p in pays:
        left = p.fee or ZERO
        for row in rows_of[p.id] if left > 0 else []:
            inv = book.invoices[row.invoice_id]
            if inv.currency != p.currency:
                continue  # an FX row took its fee when converting
            use = min(left, max(book.outstanding(inv), ZERO))
            if use > 0:
                row.fee += use
                book.fees[inv.id] += use
                left -= use
                row.reason += f"; declared bank fee {_fmt(use, inv.currency)}"
                row.inputs["declared_fee"] = str(p.fee)
    # inferred fees: a short payment within the fee tolerance settles the invoice
    if rules.fee_tolerance <= 0:
        return
    latest: dict[int, Allocation] = {}
    for p in pays:  # processing order: the last payment's row wins
        for row in rows_of[p.id]:
            latest[row.invoice_id] = row
    for inv_id, row in latest.items():
        inv = book.invoices[inv_id]
        short = book.outstanding(inv)
        limit = _money(rules.fee_tolerance * inv.amount, inv.currency)
        if (rules.amount_tolerance < short <= limit and not book.excess[inv_id]
                and not book.refunded[inv_id]):  # money given back is not a bank fee
            row.fee += short
            book.fees[inv_id] += short
            row.reason += (f"; short {_fmt(short, inv.currency)} <= fee tolerance "
                           f"{rules.fee_tolerance} x {_fmt(inv.amount, inv.currency)}: bank fee")
            row.inputs["fee_inferred"] = str(short)
            if rules.fee_account:
                row.inputs["fee_account"] = rules.fee_account
