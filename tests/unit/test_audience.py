"""training.audience: who a campaign batch is for, read from hand-made files and frames, and the
left-out list that says who was not and why."""

from types import SimpleNamespace

import pandas as pd
import pytest

from models.recs.rules import Filters
from training.audience import (
    INACTIVE,
    NO_ITEMS,
    NOT_IN_CUSTOMERS_FILE,
    NOT_IN_SEGMENT,
    UNKNOWN_CUSTOMER,
    Audience,
    LeftOut,
    check_segments,
    last_activity,
    latest_per_customer,
    left_out_path,
    read_ids,
    recommend_filters,
    select,
    split_names,
)

UTC = "UTC"
END = pd.Timestamp("2026-06-30T00:00:00Z")


def _reasons(selection) -> dict[str, str]:
    return dict(zip(selection.left_out["customer_id"], selection.left_out["reason"], strict=True))


def test_no_audience_keeps_everyone_in_order():
    selection = select(["c3", "c1", "c2", "c1"], Audience())
    assert selection.customer_ids == ["c3", "c1", "c2"]
    assert selection.left_out.empty and list(selection.left_out.columns) == ["customer_id", "reason"]


def test_customers_file_keeps_the_listed_and_names_the_rest():
    selection = select(["c1", "c2", "c3"], Audience(customers=("c3", "ghost", "c1")))
    assert selection.customer_ids == ["c1", "c3"]
    assert _reasons(selection) == {"c2": NOT_IN_CUSTOMERS_FILE, "ghost": UNKNOWN_CUSTOMER}


def test_segment_keeps_only_those_segments_and_a_customer_without_profile_is_out():
    segment_of = pd.Series({"c1": "champion", "c2": "dormant", "c3": "loyal"})
    selection = select(["c1", "c2", "c3", "c4"], Audience(segments=("champion", "loyal")), segment_of)
    assert selection.customer_ids == ["c1", "c3"]
    assert _reasons(selection) == {"c2": NOT_IN_SEGMENT, "c4": NOT_IN_SEGMENT}


def test_active_within_the_window_stay_and_the_inactive_are_named():
    last = pd.Series(
        pd.to_datetime(["2026-06-29", "2026-05-01", "2026-06-23"], utc=True), index=["c1", "c2", "c3"]
    )
    since = END - pd.Timedelta(days=7)
    selection = select(["c1", "c2", "c3", "never"], Audience(active_since=since), last_active=last)
    assert selection.customer_ids == ["c1", "c3"]
    assert _reasons(selection) == {"c2": INACTIVE, "never": INACTIVE}


def test_the_first_reason_that_applies_is_the_one_given():
    segment_of = pd.Series({"c1": "dormant", "c2": "dormant", "c3": "champion"})
    last = pd.Series(pd.to_datetime(["2020-01-01"] * 3, utc=True), index=["c1", "c2", "c3"])
    audience = Audience(customers=("c2", "c3"), segments=("champion",), active_since=END)
    selection = select(["c1", "c2", "c3"], audience, segment_of, last)
    assert selection.customer_ids == []
    assert _reasons(selection) == {"c1": NOT_IN_CUSTOMERS_FILE, "c2": NOT_IN_SEGMENT, "c3": INACTIVE}


def test_selecting_by_segment_without_segments_is_refused():
    with pytest.raises(ValueError, match="segments"):
        select(["c1"], Audience(segments=("champion",)))


def test_unknown_segment_names_the_known_ones():
    assert check_segments(["champion,loyal", "champion"]) == ("champion", "loyal")
    with pytest.raises(ValueError, match=r"--segment: unknown segment 'vip'; known segments: new, active"):
        check_segments(["vip"])


def test_split_names_takes_repeats_and_commas():
    assert split_names(["a,b", " c ", "a", ""]) == ("a", "b", "c")
    assert split_names(None) == ()


@pytest.mark.parametrize(
    "name, text",
    [
        ("ids.csv", "email,customer_id\nx@y,00042\nz@w,C7\n,C7\n"),
        ("ids.txt", "00042\n\nC7\nC7\n"),
        ("ids.csv", "00042\nC7\n"),  # one column without a header: one id per line
    ],
)
def test_read_ids_from_csv_or_plain_text_keeps_ids_as_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_ids(path, "customer_id", "--customers") == ["00042", "C7"]


def test_read_ids_from_parquet(tmp_path):
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"product_id": ["P1", "P2", None, "P1"]}).to_parquet(path)
    assert read_ids(path, "product_id", "--exclude") == ["P1", "P2"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", "email,phone\na,b\n", "no customer_id column"),
        ("empty.txt", "\n\n", "holds no customer_id"),
        ("bad.parquet", None, "no customer_id column"),
    ],
)
def test_read_ids_refuses_what_holds_no_ids_naming_option_and_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        pd.DataFrame({"id": ["a"]}).to_parquet(path)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_ids(path, "customer_id", "--customers")
    assert str(info.value).startswith(f"--customers {path}")


def test_left_out_file_sits_beside_the_output(tmp_path):
    assert left_out_path(tmp_path / "recs.parquet", None) == tmp_path / "recs.left_out.csv"
    assert left_out_path(tmp_path / "recs.csv.gz", None) == tmp_path / "recs.left_out.csv"
    assert left_out_path(tmp_path / "recs.parquet", tmp_path / "why.csv") == tmp_path / "why.csv"
    assert left_out_path(None, None) is None


def test_recommend_filters_are_the_http_filters_and_refuse_unknown_categories():
    filters = recommend_filters(
        ["shoes,books"], ["toys"], 1.0, 20.0, 2, True, known_categories=["books", "shoes", "toys"]
    )
    assert filters == Filters.from_dict(
        {
            "categories": ["shoes", "books"],
            "exclude_categories": ["toys"],
            "price_min": 1.0,
            "price_max": 20.0,
            "max_per_category": 2,
            "exclude_purchased": True,
        }
    )
    assert recommend_filters() is None  # nothing asked: no rule
    with pytest.raises(
        ValueError, match=r"--exclude-categories: unknown category 'fax'; known categories: books"
    ):
        recommend_filters(exclude_categories=["fax"], known_categories=["books"])
    with pytest.raises(ValueError, match="price_min 30.0 is above price_max 20.0"):
        recommend_filters(price_min=30.0, price_max=20.0)


def test_last_activity_counts_events_and_message_responses_not_sends():
    t = pd.to_datetime(["2026-06-01", "2026-06-10", "2026-06-20", "2026-06-25"], utc=True)
    tables = SimpleNamespace(
        events=pd.DataFrame(
            {"customer_id": ["a", "a", "b"], "ts": t[:3], "event_type": ["view", "purchase", "view"]}
        ),
        messages=pd.DataFrame(
            {
                "customer_id": ["a", "c", "b"],
                "sent_ts": [t[3], t[3], t[0]],
                "opened_ts": [pd.NaT, pd.NaT, t[3]],
                "clicked_ts": [pd.NaT, pd.NaT, pd.NaT],
            }
        ),
    )
    last = last_activity(tables)
    assert last.to_dict() == {"a": t[1], "b": t[3]}  # c was only sent a message: not active


def test_latest_per_customer_over_several_sources():
    one = pd.DataFrame({"customer_id": ["a"], "ts": pd.to_datetime(["2026-01-01"], utc=True)})
    two = pd.DataFrame(
        {"customer_id": ["a", "b"], "ts": pd.to_datetime(["2026-02-01", "2026-01-05"], utc=True)}
    )
    assert latest_per_customer([one, two, one.iloc[:0]]).to_dict() == {
        "a": pd.Timestamp("2026-02-01", tz=UTC),
        "b": pd.Timestamp("2026-01-05", tz=UTC),
    }
    assert latest_per_customer([]).empty


def test_left_out_keeps_each_customers_first_reason_and_writes_a_csv(tmp_path):
    left = LeftOut()
    left.add(select(["c1", "c2"], Audience(customers=("c1",))).left_out)
    left.add_ids(["c2", "c3", "c4"], NO_ITEMS)
    assert left.counts() == {NO_ITEMS: 2, NOT_IN_CUSTOMERS_FILE: 1}
    assert left.summary_lines() == [
        f"left out 2 customer(s): {NO_ITEMS}",
        f"left out 1 customer(s): {NOT_IN_CUSTOMERS_FILE}",
    ]
    path = left.write(tmp_path / "x.left_out.csv")
    written = pd.read_csv(path, dtype=str)
    assert written.to_dict("records") == [
        {"customer_id": "c2", "reason": NOT_IN_CUSTOMERS_FILE},
        {"customer_id": "c3", "reason": NO_ITEMS},
        {"customer_id": "c4", "reason": NO_ITEMS},
    ]
    assert pd.read_csv(LeftOut().write(tmp_path / "none.csv")).columns.tolist() == ["customer_id", "reason"]
