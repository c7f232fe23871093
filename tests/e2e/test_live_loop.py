"""The live loop on real servers: one service with two workers on one SQLite live store, and two
service processes on one PostgreSQL database. Every contact counts wherever it was decided, consent
changes and stock take effect on the next call, on every worker and process."""

import itertools
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from features.live_store import open_live_store, store_url

# a decision time of its own, weeks after the other tests' (their contacts lie outside every window)
NOW = "2026-09-01T09:00:00+00:00"
COOLDOWN = timedelta(hours=24)  # configs/contact_policy.toml: [cooldown] after_message_hours
MESSAGE_CHANNELS = ("email", "sms", "push", "social")


class Live:
    """The service processes under test and their live store: each request goes to the next
    process in turn (two processes on PostgreSQL must answer as one); `env` is what a command
    needs to use the same store."""

    def __init__(self, urls: list[str], store, env: dict[str, str]) -> None:
        self.urls, self.store, self.env = urls, store, env
        self._turn = itertools.count()

    def next_url(self) -> str:
        return self.urls[next(self._turn) % len(self.urls)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, server, workdir, generated_data, free_port, wait_until_ready, service_env):
    """SQLite: the session's server (two workers) on the working folder's store. PostgreSQL: two
    `omni serve` processes on one PostgreSQL database (a throwaway server), the identities table's
    links written there first (as `omni train` writes them to the store it is given)."""
    if request.param == "sqlite":
        url, _ = server
        with open_live_store(store_url(workdir)) as store:
            yield Live([url], store, {})
        return
    import pandas as pd

    postgres = request.getfixturevalue("postgres_url")
    env = dict(service_env, OMNI_STORE_URL=postgres, OMNI_WORKERS="1")
    procs, urls = [], []
    with open_live_store(postgres) as store:
        identities = pd.read_parquet(generated_data / "identities.parquet")
        store.link_identities(zip(identities["source_id"], identities["customer_id"], strict=True))
        try:
            for _ in range(2):
                port = free_port()
                procs.append(
                    subprocess.Popen(
                        [str(Path(sys.executable).parent / "omni"), "serve", "--port", str(port)],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                wait_until_ready(url)
            yield Live(urls, store, {"OMNI_STORE_URL": postgres})
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)


def _post(url, route: str, body: dict) -> httpx.Response:
    if isinstance(url, Live):
        url = url.next_url()
    return httpx.post(f"{url}{route}", json=body, timeout=30)


def _nba(url: str, customer: str, commit: bool = False, now: str = NOW) -> dict:
    r = _post(url, "/v1/next_best_action", {"customer_id": customer, "now": now, "commit": commit})
    assert r.status_code == 200, r.text
    return r.json()


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def senders(live):
    """Customers who get a contact at NOW (nothing committed for them yet), in the order found."""
    url = live
    found = []
    for i in range(300, 900):
        customer = f"C{i:07d}"
        if _nba(url, customer)["channel"] is not None:
            found.append(customer)
        if len(found) == 6:
            return found
    pytest.fail("no customer gets a contact at NOW in 600 tries")


@pytest.fixture(scope="module")
def store(live):
    return live.store


def _ledger(store, customer: str):
    """The customer's ledger rows from a week before NOW on (other tests' batches decide at earlier
    times in the same store)."""
    rows = store.contacts([customer])
    return rows.loc[rows["ts"] >= _when(NOW) - timedelta(days=7)]


def _respects(later: dict, contact_at: datetime) -> bool:
    """A later decision is no send, or a send at least the cooldown away from a contact."""
    if later["channel"] is None:
        return True
    return abs(_when(later["send_at"]) - contact_at) >= COOLDOWN


def test_a_committed_decision_is_in_the_ledger_and_the_next_decision_respects_it(live, senders, store):
    url = live
    customer = senders[0]
    first = _nba(url, customer, commit=True)
    assert first["committed"] is True and first["channel"] in MESSAGE_CHANNELS
    ledger = _ledger(store, customer)
    assert len(ledger) == 1 and ledger["source"].iloc[0] == "decision"
    assert ledger["channel"].iloc[0] == first["channel"] and ledger["action"].iloc[0] == first["action"]
    second = _nba(url, customer)
    assert second["committed"] is False
    assert _respects(second, _when(first["send_at"])), second


def test_concurrent_commits_on_two_workers_never_break_a_cap_or_cooldown(live, senders, store):
    url = live
    customer = senders[1]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _nba(url, customer, commit=True), range(16)))
    committed = [a for a in answers if a["committed"]]
    # with commit asked, every contact answered is in the ledger; the others were told "no contact"
    assert all(a["committed"] == (a["channel"] is not None) for a in answers)
    ledger = _ledger(store, customer).sort_values("ts")
    assert len(ledger) == len(committed) >= 1
    gaps = ledger["ts"].diff().dropna()
    assert (gaps >= COOLDOWN).all(), ledger  # 24 h apart: the cooldown, and one a day (per_day = 1)
    assert len(ledger) <= 3  # per_week = 3


def test_a_message_sent_by_a_channel_system_counts_at_once(live, senders):
    url = live
    customer = senders[2]
    r = _post(
        url,
        "/v1/events",
        {
            "customer_id": customer,
            "event_type": "message_sent",
            "channel": "email",
            "ts": NOW,
            "campaign_id": "spring-sale",
        },
    )
    assert r.status_code == 200, r.text
    assert _respects(_nba(url, customer), _when(NOW))


def test_opt_out_and_opt_in_take_effect_on_the_next_call_everywhere(live, senders):
    url = live
    customer = senders[3]
    for channel in MESSAGE_CHANNELS:
        r = _post(
            url,
            "/v1/events",
            {"customer_id": customer, "event_type": "consent", "channel": channel, "opted_in": False},
        )
        assert r.status_code == 200, r.text
    decision = _nba(url, customer)
    assert decision["channel"] is None and decision["action"] == "no_action"
    assert "no_consent" in decision["reasons"]
    channels = _post(url, "/v1/channel", {"customer_id": customer}).json()
    assert channels["channels"] == [] and "opted out" in channels["no_channel_reason"]
    st = _post(url, "/v1/send_time", {"customer_id": customer, "channel": "email"}).json()
    assert st["no_consent"] is True and st["next_send_utc"] is None

    r = _post(
        url,
        "/v1/events",
        {"customer_id": customer, "event_type": "consent", "channel": "email", "opted_in": True},
    )
    assert r.status_code == 200, r.text
    st = _post(url, "/v1/send_time", {"customer_id": customer, "channel": "email"}).json()
    assert st["no_consent"] is False and st["next_send_utc"] is not None
    ranked = [x["channel"] for x in _post(url, "/v1/channel", {"customer_id": customer}).json()["channels"]]
    assert ranked == ["email"]
    decision = _nba(url, customer)
    assert decision["channel"] in (None, "email")


def test_out_of_stock_products_leave_every_list_and_come_back(live, senders):
    url = live
    customer = senders[4]
    listed = [
        x["product_id"]
        for x in _post(url, "/v1/recommend", {"customer_id": customer, "channel": "web"}).json()["items"]
    ]
    similar = [
        x["product_id"] for x in _post(url, "/v1/similar_items", {"product_ids": [listed[0]]}).json()["items"]
    ]
    decision = _nba(url, customer)
    gone = sorted({listed[0], listed[1], similar[0], *decision["product_ids"]})
    try:
        r = _post(url, "/v1/inventory", {"items": [{"product_id": p, "in_stock": False} for p in gone]})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(gone) and r.json()["out_of_stock"] >= len(gone)
        # every worker, at once: ask several times (requests are spread over the workers)
        for _ in range(4):
            now_listed = _post(url, "/v1/recommend", {"customer_id": customer, "channel": "email"}).json()
            assert not set(gone) & {x["product_id"] for x in now_listed["items"]}
            now_similar = _post(url, "/v1/similar_items", {"product_ids": [listed[0]]}).json()
            assert not set(gone) & {x["product_id"] for x in now_similar["items"]}
            assert not set(gone) & set(_nba(url, customer)["product_ids"])
    finally:
        back = _post(url, "/v1/inventory", {"items": [{"product_id": p, "in_stock": True} for p in gone]})
        assert back.status_code == 200, back.text
    again = [
        x["product_id"]
        for x in _post(url, "/v1/recommend", {"customer_id": customer, "channel": "web"}).json()["items"]
    ]
    assert again[:2] == listed[:2]


@pytest.mark.parametrize(
    "route, body, field",
    [
        ("/v1/events", {"customer_id": "x", "event_type": "consent", "channel": "email"}, "opted_in"),
        (
            "/v1/events",
            {"customer_id": "x", "event_type": "view", "channel": "web", "product_id": "p", "opted_in": True},
            "opted_in",
        ),
        (
            "/v1/events",
            {
                "customer_id": "x",
                "event_type": "view",
                "channel": "web",
                "product_id": "p",
                "campaign_id": "c",
            },
            "campaign_id",
        ),
        ("/v1/events", {"customer_id": "x", "event_type": "message_sent", "channel": "fax"}, "channel"),
        ("/v1/inventory", {"items": []}, "items"),
        ("/v1/inventory", {"items": [{"product_id": "p"}]}, "in_stock"),
        ("/v1/next_best_action", {"customer_id": "x", "commit": "yes please"}, "commit"),
    ],
)
def test_live_inputs_are_validated_naming_the_field(live, route, body, field):
    url = live
    r = _post(url, route, body)
    assert r.status_code == 400, r.text
    assert field in r.text


def test_omni_decide_writes_its_sends_to_the_ledger_the_service_reads(
    live, senders, store, tracking_uri, tmp_path
):
    import pandas as pd
    from click.testing import CliRunner

    from training.cli import main

    url = live
    customer = senders[5]
    runner = CliRunner()
    args = ["decide", "--customer", customer, "--now", NOW, "--tracking-uri", tracking_uri]
    dry = runner.invoke(main, [*args, "--dry-run", "--out", str(tmp_path / "dry.parquet")], env=live.env)
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and _ledger(store, customer).empty
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "d.parquet")], env=live.env)
    assert result.exit_code == 0, result.output
    decisions = pd.read_parquet(tmp_path / "d.parquet")
    assert {"consented", "control_group"} <= set(decisions.columns)
    assert decisions["consented"].iloc[0] and not decisions["control_group"].iloc[0]
    ledger = _ledger(store, customer)
    assert len(ledger) == 1 and ledger["source"].iloc[0] == "batch"
    assert "1 sends written to the contact ledger" in result.output
    # the service, on any worker, respects the batch's send
    assert _respects(_nba(url, customer), ledger["ts"].iloc[0].to_pydatetime())


def test_any_source_id_names_its_customer_on_every_route(live, generated_data, tracking_uri):
    import pandas as pd
    from click.testing import CliRunner

    from training.cli import main

    url = live
    identities = pd.read_parquet(generated_data / "identities.parquet")
    card = identities.loc[identities["source_system"] == "pos_loyalty"].iloc[-1]
    source, customer = str(card["source_id"]), str(card["customer_id"])
    by_card = _post(url, "/v1/recommend", {"customer_id": source, "channel": "store", "k": 5}).json()
    by_id = _post(url, "/v1/recommend", {"customer_id": customer, "channel": "store", "k": 5}).json()
    assert by_card["customer_id"] == customer and by_card["cold_start"] is False
    assert by_card["items"] == by_id["items"]
    for route, body in (
        ("/v1/profile", {}),
        ("/v1/channel", {}),
        ("/v1/send_time", {"channel": "email"}),
        ("/v1/next_best_action", {"now": NOW}),
    ):
        answer = _post(url, route, {"customer_id": source, **body})
        assert answer.status_code == 200, answer.text
        assert answer.json()["customer_id"] == customer, route
    assert _post(url, "/v1/profile", {"customer_id": source}).json()["known"] is True
    # an event posted under the card reaches the customer's context
    r = _post(
        url,
        "/v1/events",
        {"customer_id": source, "event_type": "add_to_cart", "channel": "store", "product_id": "P-card"},
    )
    assert (
        r.status_code == 200 and r.json()["customer_id"] == customer and "P-card" in r.json()["session_items"]
    )
    # an id learned later: an event that carries both links them
    r = _post(
        url,
        "/v1/events",
        {
            "customer_id": customer,
            "source_id": "device-new-42",
            "event_type": "view",
            "channel": "app",
            "product_id": "P-x",
        },
    )
    assert r.status_code == 200, r.text
    assert _post(url, "/v1/channel", {"customer_id": "device-new-42"}).json()["customer_id"] == customer
    result = CliRunner().invoke(main, ["profile", source, "--tracking-uri", tracking_uri], env=live.env)
    assert result.exit_code == 0, result.output
    assert f'"{customer}"' in result.output


def test_batch_send_time_and_channel_follow_consent_and_flag_the_control_group(
    live, generated_data, tracking_uri, tmp_path
):
    import pandas as pd
    from click.testing import CliRunner

    from training.cli import main

    url = live
    consent = pd.read_parquet(generated_data / "consent.parquet").sort_values("updated_ts")
    latest = consent.drop_duplicates(["customer_id", "channel"], keep="last")
    email_ok = set(latest.loc[(latest["channel"] == "email") & latest["opted_in"], "customer_id"])
    # a customer opted in to e-mail at training, who opts out now (live)
    leaver = sorted(email_ok)[-1]
    r = _post(
        url,
        "/v1/events",
        {"customer_id": leaver, "event_type": "consent", "channel": "email", "opted_in": False},
    )
    assert r.status_code == 200, r.text
    runner = CliRunner()
    out = tmp_path / "st.parquet"
    args = ["send-time", "--all", "--channel", "email", "--after", NOW, "--out", str(out)]
    result = runner.invoke(main, [*args, "--tracking-uri", tracking_uri], env=live.env)
    assert result.exit_code == 0, result.output
    plan = pd.read_parquet(out).set_index("customer_id")
    assert {"consented", "control_group"} <= set(plan.columns)
    expected = plan.index.isin(list(email_ok - {leaver}))
    assert (plan["consented"].to_numpy() == expected).all()
    assert plan.loc[~plan["consented"], "next_send_utc"].isna().all()
    assert plan.loc[plan["consented"], "next_send_utc"].notna().all()
    assert 0 < plan["control_group"].mean() < 0.15  # the policy's 5 % share
    out = tmp_path / "ch.parquet"
    result = runner.invoke(
        main, ["channel", "--all", "--out", str(out), "--tracking-uri", tracking_uri], env=live.env
    )
    assert result.exit_code == 0, result.output
    ranked = pd.read_parquet(out)
    assert ranked["consented"].all() and "control_group" in ranked
    assert "email" not in set(ranked.loc[ranked["customer_id"] == leaver, "channel"])
    email_rows = set(ranked.loc[ranked["channel"] == "email", "customer_id"])
    assert email_rows <= email_ok - {leaver}


def test_batch_recommend_leaves_out_of_stock_products_and_flags_consent_and_control(
    live, tracking_uri, tmp_path
):
    import pandas as pd
    from click.testing import CliRunner

    from training.cli import main

    url = live
    runner = CliRunner()
    args = ["recommend", "--all", "--k", "5", "--tracking-uri", tracking_uri]
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "before.parquet")], env=live.env)
    assert result.exit_code == 0, result.output
    before = pd.read_parquet(tmp_path / "before.parquet")
    assert {"consented", "control_group"} <= set(before.columns)
    assert before["consented"].any() and not before["consented"].all()  # generated consent: some opted out
    assert 0 < before.drop_duplicates("customer_id")["control_group"].mean() < 0.15
    top = before["product_id"].value_counts().index[:3].tolist()
    try:
        r = _post(url, "/v1/inventory", {"items": [{"product_id": p, "in_stock": False} for p in top]})
        assert r.status_code == 200, r.text
        result = runner.invoke(main, [*args, "--out", str(tmp_path / "after.parquet")], env=live.env)
        assert result.exit_code == 0, result.output
    finally:
        _post(url, "/v1/inventory", {"items": [{"product_id": p, "in_stock": True} for p in top]})
    after = pd.read_parquet(tmp_path / "after.parquet")
    assert not set(top) & set(after["product_id"])
    assert after.groupby("customer_id").size().max() == 5


def test_a_purchase_posted_since_training_ends_a_win_back(live):
    url = live
    lapsed = None
    for i in range(100, 300):  # customers no other test of this module decides for
        customer = f"C{i:07d}"
        if _nba(url, customer)["action"] == "win_back":
            lapsed = customer
            break
    assert lapsed is not None, "no win-back among 200 customers at NOW"
    bought = (
        _when(NOW) - timedelta(days=3)
    ).isoformat()  # after the purchase cooldown: only the segment moves
    r = _post(
        url,
        "/v1/events",
        {
            "customer_id": lapsed,
            "event_type": "purchase",
            "channel": "store",
            "product_id": "P-back",
            "ts": bought,
        },
    )
    assert r.status_code == 200, r.text
    after = _nba(url, lapsed)
    assert after["action"] != "win_back", after


def test_opens_and_clicks_since_training_reach_channel_and_send_time(live):
    """A customer the models never saw opts in to e-mail and push, is sent three e-mails and opens
    and clicks them, each at one hour of the day (UTC, six hours from the best hour it got before):
    channel no longer answers from the fallback, and send time's best hour is the hour of those
    opens (before, its grid was the population's)."""
    url = live
    customer = f"LIVE-OPENER-{len(live.urls)}"
    for channel in ("email", "push"):
        body = {"customer_id": customer, "event_type": "consent", "channel": channel, "opted_in": True}
        assert _post(url, "/v1/events", body).status_code == 200
    asked = {"customer_id": customer, "channel": "email", "quiet_hours": "none"}
    before_channel = _post(url, "/v1/channel", {"customer_id": customer}).json()
    before_time = _post(url, "/v1/send_time", asked).json()
    assert before_channel["fallback"] is True
    assert {x["channel"] for x in before_channel["channels"]} == {"email", "push"}
    hour = (before_time["best_hour_local"] + 6) % 24
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for day in range(1, 4):
        sent = today - timedelta(days=day) + timedelta(hours=hour, minutes=5)
        for event_type, minutes in (("message_sent", 0), ("message_open", 20), ("message_click", 21)):
            at = (sent + timedelta(minutes=minutes)).isoformat()
            body = {"customer_id": customer, "event_type": event_type, "channel": "email", "ts": at}
            r = _post(url, "/v1/events", body)
            assert r.status_code == 200, r.text
    after_channel = _post(url, "/v1/channel", {"customer_id": customer}).json()
    after_time = _post(url, "/v1/send_time", asked).json()
    assert after_channel["fallback"] is False
    assert after_time["timezone"] == "UTC" and after_time["best_hour_local"] == hour
    assert after_time["fallback"] is False and before_time["fallback"] is True
