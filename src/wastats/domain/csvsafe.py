"""CSV cells that a spreadsheet will not run as formulas (CSV / formula injection).

Strings that reach a CSV can come from webhooks, i.e. from anyone who can get Meta to send one
(the pricing type is kept as sent, whatever it holds). Excel, LibreOffice and Google Sheets
treat a cell that starts with `=`, `+`, `-` or `@` as a formula, and a leading tab or carriage
return is stripped by some of them before that check, so a cell like
`=HYPERLINK("http://evil", "click")` would run when a user opens the download. OWASP's
advice, followed here: prefix such a cell with a single quote, which the spreadsheets show as
text and do not evaluate.

Every CSV line wastats writes comes from `csv_line` (today: `/v1/stats?format=csv`, which the
dashboard's download and `wastats stats --csv` also return byte for byte).

It also quotes a cell holding a carriage return: Python's `csv` module quotes only the
characters of its line terminator, so with `\n` lines a lone `\r` went out bare, and a
reader saw a new row there (a second way for a webhook string to forge rows).

Not `defusedcsv`: it misses the tab and carriage-return prefixes, rewrites `|` inside cells,
and has no type hints; the rule is one line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """`value` unchanged unless it is a string a spreadsheet would read as a formula; that
    one gets a leading `'`. Numbers stay numbers: a negative count is not an injection."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_row(row: Iterable[object]) -> list[object]:
    return [safe_cell(value) for value in row]


def csv_line(row: Iterable[object]) -> str:
    """One CSV line (ending in `\n`) of `row`, every cell made safe. Written with `\r\n` so
    that cells holding either character are quoted, then given the `\n` ending."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(safe_row(row))
    return buffer.getvalue()[:-2] + "\n"
