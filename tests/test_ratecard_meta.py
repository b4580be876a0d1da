"""`wastats ratecard import` of Meta's published layout (title rows, then
`Market,Currency,Marketing,...`), besides wastats' own format: what each market becomes, the
effective date, the earlier card kept for earlier days, and bad files refused with the line."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wastats.cli.main import app as cli_app
from wastats.domain import ratecard, ratecard_meta
from wastats.domain.errors import InvalidInput
from wastats.store import meta as repo
from wastats.store.db import Database

runner = CliRunner()

HEADER = "Market,Currency,Marketing,Utility,Authentication,Authentication-International,Service"


def _meta_card(rows: list[str], *, titles: tuple[str, ...] | None = None) -> str:
    titles = titles or (
        "WhatsApp Business Platform rate card,,,,,,",
        "Rates effective October 1, 2026,,,,,,",
        "All rates in USD per delivered message,,,,,,",
        ",,,,,,",
    )
    return "\n".join([*titles, HEADER, *rows]) + "\n"


ROWS = [
    "Brazil,USD,$0.0625,$0.0068,$0.0068,n/a,$0.0068",
    "India,USD,$0.0118,$0.0014,$0.0014,$0.0280,$0.0014",
    "North America,USD,$0.0250,$0.0034,$0.0034,n/a,$0.0034",
    "Rest of Latin America,USD,$0.0740,$0.0113,$0.0113,n/a,$0.0113",
    "Other,USD,$0.0604,$0.0077,$0.0077,n/a,$0.0077",
]


def _ts(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


def _convert(text: str, **kw: object) -> ratecard_meta.MetaCard:
    args: dict[str, object] = {
        "name": "card.csv", "source": None, "effective_from": None, "previous": None,
        "today": date(2026, 12, 7),
    }  # fmt: skip
    args.update(kw)
    return ratecard_meta.convert(text, **args)  # type: ignore[arg-type]


def test_meta_layout_markets_regions_and_dates() -> None:
    converted = _convert(_meta_card(ROWS))
    assert converted.effective_from == date(2026, 10, 1)
    assert converted.regions == ("Rest of Latin America",)
    card = ratecard.parse(converted.text)
    nov = _ts("2026-11-02")

    def rate(market: str, category: str) -> float | None:
        found = card.rate(market, category, "regular", "", nov)
        return None if found is None else found.rate

    assert rate("BR", "marketing") == 0.0625
    assert rate("BR", "marketing_lite") == 0.0625  # MM Lite: the marketing rate
    assert rate("IN", "authentication_international") == 0.028
    assert rate("BR", "authentication_international") is None  # n/a here and in Other
    assert rate("US", "utility") == rate("CA", "utility") == 0.0034  # North America
    assert rate("PY", "marketing") == 0.0604  # Rest of Latin America: the Other rate
    assert rate("IL", "service") == 0.0077
    # Before the card's date: nothing (there was no earlier imported card).
    assert card.rate("BR", "marketing", "regular", "", _ts("2026-09-30")) is None
    assert card.rate("BR", "marketing", "regular", "0:250000", nov) is not None  # no tiers
    assert "card.csv" in card.source


def test_an_imported_card_keeps_pricing_the_days_before_the_next(
    database_url: str, tmp_path: Path
) -> None:
    env = {"WASTATS_DATABASE_URL": database_url}
    first = tmp_path / "july.csv"
    first.write_text(
        _meta_card(["Brazil,USD,0.0625,0.0068,0.0068,,", "Other,USD,0.0600,0.0070,0.0070,,"])
    )
    second = tmp_path / "october.csv"
    second.write_text(_meta_card(["Brazil,USD,0.0700,0.0080,0.0080,,0.0080"], titles=("x,,",)))
    result = runner.invoke(
        cli_app,
        ["ratecard", "import", str(first), "--effective-from", "2025-07-01",
         "--source", "https://developers.facebook.com/docs/whatsapp/pricing (July 2025 CSV)"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "source: https://developers.facebook.com/docs/whatsapp/pricing" in result.output
    # No date in the title rows and none given: refused, saying what to do.
    result = runner.invoke(cli_app, ["ratecard", "import", str(second)], env=env)
    assert result.exit_code == 1
    assert "--effective-from" in result.output
    result = runner.invoke(
        cli_app, ["ratecard", "import", str(second), "--effective-from", "2026-10-01"], env=env
    )
    assert result.exit_code == 0, result.output
    db = Database(database_url)
    try:
        with db.read() as conn:
            stored = repo.stored_ratecard(conn)
    finally:
        db.dispose()
    assert stored is not None
    card = ratecard.parse(stored)
    sept, nov = _ts("2026-09-30"), _ts("2026-11-01")
    assert card.rate("BR", "marketing", "regular", "", sept).rate == 0.0625  # type: ignore[union-attr]
    assert card.rate("BR", "marketing", "regular", "", nov).rate == 0.07  # type: ignore[union-attr]
    # The new card has no Other row: from its date, unlisted markets get no estimate.
    assert card.rate("IL", "marketing", "regular", "", sept).rate == 0.06  # type: ignore[union-attr]
    assert card.rate("IL", "marketing", "regular", "", nov) is None
    assert card.rate("BR", "service", "regular", "", nov).rate == 0.008  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["Atlantis,USD,0.01,0.01,0.01,,"], "line 6: unknown market 'Atlantis'"),
        (["Brazil,USD,0.01,cheap,0.01,,"], "line 6: Utility 'cheap' is not a rate"),
        (["Brazil,USD,0.01,-0.01,0.01,,"], "line 6: Utility '-0.01' is not a rate >= 0"),
        (["Brazil,USD,0.01,,,,", "Brazil,USD,0.02,,,,"], "line 7: market 'Brazil' again"),
        (["Brazil,Dollars,0.01,,,,"], "line 6: currency 'DOLLARS'"),
        (["Brazil,USD,,,,,"], "no rates"),
    ],
)
def test_bad_meta_cards_name_the_line_and_the_fault(rows: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _convert(_meta_card(rows))


def test_bad_files_through_the_cli(database_url: str, tmp_path: Path) -> None:
    env = {"WASTATS_DATABASE_URL": database_url}
    cases = {
        "card.xlsx": (b"PK\x03\x04rest-of-a-zip", "save it as CSV"),
        "latin1.csv": ("Market,Currency,Marketing\nCuraçao,USD,0.01\n".encode("latin-1"),
                       "not UTF-8"),
        "own.csv": (b"# v\n# source: s\n# date: 2026-01-01\n"
                    b"market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
                    b"\n*,marketing,regular,,USD,free,,\n", "line 6: rate 'free'"),
        "short.csv": (b"# v\n# source: s\n# date: 2026-01-01\n"
                      b"market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
                      b"*,marketing,regular\n", "line 5: expected 8 columns"),
        "nothing.csv": (b"a,b\n1,2\n", "source"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = runner.invoke(cli_app, ["ratecard", "import", str(path)], env=env)
        assert result.exit_code == 1, (name, result.output)
        assert message in result.output.replace("\n", " "), (name, result.output)
        assert "Traceback" not in result.output


def test_own_format_with_a_source_given() -> None:
    own = (
        "# my card\n# source: old\n# date: 2026-01-01\n"
        "market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
        "*,marketing,regular,,USD,0.02,2025-07-01,\n"
    )
    assert not ratecard_meta.is_meta_layout(own)
    assert ratecard_meta.is_meta_layout(_meta_card(ROWS))


# One name per country (aliases such as `UK` and markets that overlap, such as `United States`
# and `North America`, would price a country twice).
_ALIASES = {"other", "turkiye", "türkiye", "uae", "uk", "united states", "canada"}
_market = st.sampled_from(sorted(k for k in ratecard_meta.MARKETS if k not in _ALIASES))
_rate = st.one_of(
    st.just("n/a"),
    st.decimals(min_value=0, max_value=3000, places=4).map(lambda d: f"${d}"),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_market, st.tuples(_rate, _rate, _rate, _rate, _rate), min_size=1))
def test_every_published_rate_reads_back_exactly(
    table: dict[str, tuple[str, str, str, str, str]],
) -> None:
    """Whatever the markets and figures, each number in Meta's table is the rate of each of its
    market's countries, for its category, from the card's date; n/a gives no row."""
    rows = [f"{m.title()},USD,{','.join(cells)}" for m, cells in table.items()]
    if all(c == "n/a" for cells in table.values() for c in cells):
        with pytest.raises(InvalidInput, match="no rates"):
            _convert(_meta_card(rows))
        return
    card = ratecard.parse(_convert(_meta_card(rows)).text)
    at = _ts("2026-10-01")
    categories = ("marketing", "utility", "authentication", "authentication_international",
                  "service")  # fmt: skip
    for market, cells in table.items():
        codes = ratecard_meta.MARKETS[market]
        for code in codes:
            for category, cell in zip(categories, cells, strict=True):
                found = [
                    r for r in card.rates
                    if r.market == code and r.category == category
                ]  # fmt: skip
                if cell == "n/a":
                    assert found == []
                else:
                    assert [r.rate for r in found] == [float(cell[1:])]
                    assert card.rate(code, category, "regular", "", at) is not None
