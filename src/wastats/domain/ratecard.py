"""Rate cards: what a delivered message costs where Meta does not say (spec, "Cost").

A card is a CSV text: `#` comment lines (the first names the version; `source:` and `date:`
lines say where the rates come from), then rows of market, category, pricing type, tier,
currency, rate and effective dates. Pure: parsing and lookup, no I/O. The shipped card is
`wastats/data/ratecard.csv`; `wastats ratecard import FILE` stores another in the database.

Rates have effective dates because Meta's prices move (1 July 2025 per-message pricing, rate
revisions, and from 1 October 2026 paid service messages). Categories without a rate (e.g. Meta
Business Agent messages, billed per token) get no estimate: only Meta's own `cost` covers them.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources

from wastats.domain.errors import InvalidInput

COLUMNS = (
    "market",
    "category",
    "pricing_type",
    "tier",
    "currency",
    "rate",
    "effective_from",
    "effective_to",
)


@dataclass(frozen=True, slots=True)
class Rate:
    market: str
    category: str
    pricing_type: str
    tier: str
    currency: str
    rate: float
    effective_from: date | None
    effective_to: date | None


@dataclass(frozen=True, slots=True)
class RateCard:
    version: str
    source: str
    date: str
    rates: tuple[Rate, ...]
    text: str

    def rate(
        self, market: str, category: str, pricing_type: str, tier: str, at: int
    ) -> Rate | None:
        """The rate of a message delivered at `at` (UTC seconds): the market's own row before
        the `*` row, a row of the message's tier before one for any tier."""
        day = datetime.fromtimestamp(at, UTC).date()
        best: tuple[int, Rate] | None = None
        for r in self.rates:
            if r.category != category or r.pricing_type != pricing_type:
                continue
            if r.market not in (market, "*") or r.tier not in (tier, ""):
                continue
            if (r.effective_from and day < r.effective_from) or (
                r.effective_to and day >= r.effective_to
            ):
                continue
            score = (r.market != "*") * 2 + (r.tier != "")
            if best is None or score > best[0]:
                best = (score, r)
        return best[1] if best else None


def _day(text: str, line: int, column: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"line {line}: {column} {text!r} is not a date YYYY-MM-DD") from None


def parse(text: str) -> RateCard:
    """Parse a card, naming the first bad line."""
    comments = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    version = comments[0] if comments else ""
    source = next((c[7:].strip() for c in comments if c.lower().startswith("source:")), "")
    when = next((c[5:].strip() for c in comments if c.lower().startswith("date:")), "")
    if not source or not when:
        raise InvalidInput("a rate card needs `# source: ...` and `# date: ...` comment lines")
    # Errors name the file's own line numbers: comment and blank lines count.
    body = [
        (n, ln)
        for n, ln in enumerate(text.splitlines(), start=1)
        if ln.strip() and not ln.startswith("#")
    ]
    reader = csv.DictReader(io.StringIO("\n".join(ln for _, ln in body)))
    try:
        if tuple(reader.fieldnames or ()) != COLUMNS:
            where = f"line {body[0][0]}: " if body else ""
            raise InvalidInput(f"{where}the rate card's header must be: {','.join(COLUMNS)}")
        rates = [_rate(row, body[reader.line_num - 1][0]) for row in reader]
    except csv.Error as exc:
        raise InvalidInput(f"line {body[reader.line_num - 1][0]}: {exc}") from None
    if not rates:
        raise InvalidInput("the rate card has no rates")
    return RateCard(version, source, when, tuple(rates), text)


def _rate(row: dict[str, str], n: int) -> Rate:
    """Line `n` of the card as a rate, or InvalidInput naming the line."""
    if None in row.values() or None in row:
        raise InvalidInput(f"line {n}: expected {len(COLUMNS)} columns ({','.join(COLUMNS)})")
    try:
        rate = float(row["rate"])
    except (TypeError, ValueError):
        raise InvalidInput(f"line {n}: rate {row['rate']!r} is not a number") from None
    if not math.isfinite(rate):
        raise InvalidInput(f"line {n}: rate {row['rate']!r} is not a number")
    if rate < 0 or not row["currency"] or len(row["currency"]) != 3:
        raise InvalidInput(f"line {n}: a rate needs a currency code and a rate >= 0")
    return Rate(
        market=row["market"].strip().upper() or "*",
        category=row["category"].strip().lower(),
        pricing_type=row["pricing_type"].strip().lower(),
        tier=row["tier"].strip(),
        currency=row["currency"].strip().upper(),
        rate=rate,
        effective_from=_day(row["effective_from"], n, "effective_from"),
        effective_to=_day(row["effective_to"], n, "effective_to"),
    )


def shipped() -> RateCard:
    """The card shipped in the package."""
    return parse(resources.files("wastats").joinpath("data/ratecard.csv").read_text("utf-8"))
