"""Meta's published rate card (its CSV, or its spreadsheet saved as CSV) as a wastats rate card.

Meta publishes per-message rates as one table per currency: a few title rows (the card's name,
its effective date, the currency), then a header such as
`Market,Currency,Marketing,Utility,Authentication,Authentication-International,Service` and one
row per market. A market is a country (`Brazil`), a group (`North America`: the United States
and Canada), a region (`Rest of Latin America`) or `Other`. Cells carry `$0.0625`, `0.0625`,
`n/a` or nothing.

What this module makes of it (`convert`), as rows of `wastats.domain.ratecard`'s format:

* a country's row becomes its ISO code's rates; `North America` becomes `US` and `CA`;
* `Other` becomes the `*` row, the rate of every market not listed;
* `Rest of ...` regions: a region's rate cannot be given to a country without Meta's
  country-to-region list, which changes with every card, so their countries get the `Other`
  rate; the regions are reported (`MetaCard.regions`) so the operator knows;
* Marketing also prices `marketing_lite` (Marketing Messages Lite is billed at the marketing
  rate); no volume tiers (the published table has none): the `tier` column stays empty;
* every rate takes effect on the card's date (`--effective-from`, else the date in the title
  rows); the card in use before (if the operator imported one) keeps its rates for the days
  before that date, so estimates of earlier months do not move.

Errors name the file's own line number and what is wrong with it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime

from wastats.domain.errors import InvalidInput
from wastats.domain.ratecard import COLUMNS, RateCard

# Meta's market names (the individually priced markets of its cards since July 2025, and the
# nine that left their regions on 1 October 2026) and their ISO 3166 codes.
MARKETS: dict[str, tuple[str, ...]] = {
    "argentina": ("AR",), "bangladesh": ("BD",), "brazil": ("BR",), "chile": ("CL",),
    "colombia": ("CO",), "egypt": ("EG",), "france": ("FR",), "germany": ("DE",),
    "india": ("IN",), "indonesia": ("ID",), "iraq": ("IQ",), "israel": ("IL",),
    "italy": ("IT",), "kazakhstan": ("KZ",), "kuwait": ("KW",), "malaysia": ("MY",),
    "mexico": ("MX",), "morocco": ("MA",), "nepal": ("NP",), "netherlands": ("NL",),
    "nigeria": ("NG",), "oman": ("OM",), "pakistan": ("PK",), "peru": ("PE",),
    "russia": ("RU",), "saudi arabia": ("SA",), "south africa": ("ZA",), "spain": ("ES",),
    "sri lanka": ("LK",), "turkey": ("TR",), "turkiye": ("TR",), "türkiye": ("TR",),
    "ukraine": ("UA",), "united arab emirates": ("AE",), "uae": ("AE",),
    "united kingdom": ("GB",), "uk": ("GB",), "united states": ("US",), "canada": ("CA",),
    "north america": ("US", "CA"), "other": ("*",),
}  # fmt: skip

# Column heading → (category, pricing type) rows it prices, as /v1/stats names them.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "marketing": ("marketing", "marketing_lite"),
    "utility": ("utility",),
    "authentication": ("authentication",),
    "authentication-international": ("authentication_international",),
    "authentication international": ("authentication_international",),
    "service": ("service",),
}

CURRENCIES = ("USD", "EUR", "GBP", "INR", "IDR", "BRL", "MXN", "ARS", "COP", "AED", "SAR",
              "AUD", "MYR", "PEN", "CLP", "SGD")  # fmt: skip
"""The currencies Meta publishes its card in."""

_EMPTY = {"", "n/a", "na", "-", "–", "—", "not applicable"}
_MONTHS = "january february march april may june july august september october november december"


@dataclass(frozen=True, slots=True)
class MetaCard:
    text: str
    """The card in wastats' format, ready for `ratecard.parse` and storing."""
    markets: int
    regions: tuple[str, ...]
    """`Rest of ...` markets whose countries get the `Other` rate."""
    effective_from: date


def _header_index(rows: list[list[str]]) -> int | None:
    for i, row in enumerate(rows):
        first = row[0].strip().strip("\ufeff").lower() if row else ""
        if first in ("market", "markets", "country", "country/region", "market name"):
            return i
    return None


def is_meta_layout(text: str) -> bool:
    """Whether `text` looks like Meta's layout (a `Market` header) rather than wastats' own."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error:
        return False
    at = _header_index(rows)
    # wastats' own header starts with `market` too; Meta's names a category per column.
    return at is not None and any(c.strip().lower() in CATEGORIES for c in rows[at])


def _date_in(titles: list[str]) -> date | None:
    joined = " ".join(titles)
    iso = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", joined)
    if iso:
        try:
            return date.fromisoformat(iso.group(0))
        except ValueError:
            return None
    named = re.search(
        rf"\b({_MONTHS.replace(' ', '|')})\s+(\d{{1,2}}),?\s+(\d{{4}})\b", joined, re.I
    )
    if named:
        try:
            return datetime.strptime(
                f"{named.group(1).title()} {named.group(2)} {named.group(3)}", "%B %d %Y"
            ).date()
        except ValueError:
            return None
    return None


def _rate(cell: str, line: int, column: str) -> float | None:
    value = cell.strip()
    if value.lower() in _EMPTY:
        return None
    if value.lower() == "free":
        return 0.0
    number = re.sub(r"^[^\d.\-]+|[^\d.]+$", "", value.replace(",", ""))
    try:
        rate = float(number)
    except ValueError:
        raise InvalidInput(f"line {line}: {column} {cell.strip()!r} is not a rate") from None
    if rate < 0 or rate != rate or rate == float("inf"):
        raise InvalidInput(f"line {line}: {column} {cell.strip()!r} is not a rate >= 0")
    return rate


def convert(
    text: str,
    *,
    name: str,
    source: str | None,
    effective_from: date | None,
    previous: RateCard | None,
    today: date,
) -> MetaCard:
    """Meta's layout (`text`, from the file `name`) as a card in wastats' format; `previous`
    (the operator's card in use, if any) keeps its rates for the days before the new card's."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InvalidInput(f"not a CSV file: {exc}") from None
    at = _header_index(rows)
    if at is None:
        raise InvalidInput("no header row starting with `Market` (Meta's rate card layout)")
    titles = [" ".join(c.strip() for c in row if c.strip()) for row in rows[:at]]
    header = [c.strip().strip("\ufeff").lower() for c in rows[at]]
    priced = {i: CATEGORIES[h] for i, h in enumerate(header) if h in CATEGORIES}
    if not priced:
        raise InvalidInput(
            f"line {at + 1}: no rate columns; expected some of Marketing, Utility, "
            "Authentication, Authentication-International, Service"
        )
    currency_col = header.index("currency") if "currency" in header else None
    title_currency = next((c for c in CURRENCIES if re.search(rf"\b{c}\b", " ".join(titles))), None)
    if currency_col is None and title_currency is None:
        raise InvalidInput(f"line {at + 1}: no Currency column, and no currency in the title rows")
    when = effective_from or _date_in(titles)
    if when is None:
        raise InvalidInput(
            "the card's effective date is not in its title rows: give --effective-from YYYY-MM-DD"
        )
    out: list[tuple[str, str, str, float]] = []  # market, category, currency, rate
    regions: list[str] = []
    seen: dict[str, int] = {}
    markets = 0
    for n, row in enumerate(rows[at + 1 :], start=at + 2):
        if not any(c.strip() for c in row):
            continue
        market = row[0].strip()
        key = market.lower()
        if key.startswith("rest of"):
            regions.append(market)
            continue
        codes = MARKETS.get(key)
        if codes is None and re.fullmatch(r"[A-Za-z]{2}", market):
            codes = (market.upper(),)
        if codes is None:
            if n > at + 2 and not any(c.strip() for c in row[1:]):
                continue  # a footnote under the table
            raise InvalidInput(
                f"line {n}: unknown market {market!r}: a country Meta prices on its own, "
                "`North America`, `Rest of ...` or `Other` (or an ISO country code)"
            )
        if key in seen:
            raise InvalidInput(f"line {n}: market {market!r} again (first on line {seen[key]})")
        seen[key] = n
        currency = title_currency or ""
        if currency_col is not None and currency_col < len(row) and row[currency_col].strip():
            currency = row[currency_col].strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise InvalidInput(f"line {n}: currency {currency!r} is not a currency code")
        markets += 1
        for i, categories in priced.items():
            rate = _rate(row[i] if i < len(row) else "", n, rows[at][i].strip())
            if rate is None:
                continue
            for code in codes:
                for category in categories:
                    out.append((code, category, currency, rate))
    if not out:
        raise InvalidInput("the rate card has no rates")
    title = titles[0] if titles else "Meta rate card"
    lines = [
        f"# {title} ({name}, imported {today.isoformat()})",
        f"# source: {source or title + ', from ' + name}"
        + (f"; before {when.isoformat()}: {previous.source}" if previous else ""),
        f"# date: {when.isoformat()}",
        "# Converted from Meta's layout by `wastats ratecard import`: `Other` is the * row;"
        + (f" {', '.join(regions)} get the Other rate." if regions else ""),
        ",".join(COLUMNS),
    ]
    # repr: the shortest text that reads back as the same float (no rounding of Meta's figures).
    lines += [f"{m},{c},regular,,{cur},{r!r},{when.isoformat()}," for m, c, cur, r in out]
    if previous is not None:
        for r in previous.rates:
            if r.effective_from is not None and r.effective_from >= when:
                continue  # the new card replaces these
            until = min(r.effective_to, when) if r.effective_to else when
            lines.append(
                f"{r.market},{r.category},{r.pricing_type},{r.tier},{r.currency},{r.rate!r},"
                f"{r.effective_from.isoformat() if r.effective_from else ''},{until.isoformat()}"
            )
    return MetaCard("\n".join(lines) + "\n", markets, tuple(regions), when)
