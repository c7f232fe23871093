"""`omni`: the one command line for every lifecycle stage (generate, validate, train, recommend, ...).

Conventions every command follows: `--data DIR` (default: the demo data folder) and
`--tracking-uri URI` (default: the local SQLite store) where data or models are read; `--out FILE`
for what is written (written to a temporary file first, then moved into place); exit 0 on
success, 2 on bad input with the reason on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from models.catalog import CHANNEL, RECOMMENDER, SEND_TIME, by_name
from training.config import ChannelTrainingConfig, NBAConfig, RecsConfig, TrainConfig
from training.settings import default_data_dir, default_tracking_uri, quiet_libraries

quiet_libraries()

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def fail_missing(tracking_uri: str, family: str, error: Exception) -> None:
    """Exit 2: the family has no champion; the message says why when the last training run did."""
    from training.scoring import missing_champion_message

    fail(missing_champion_message(tracking_uri, family, error))


def channels_option(f):
    return click.option(
        "--channels",
        default=None,
        help="Comma-separated list of allowed channels (default: store,web,app,email,sms,push,social,call_center).",
    )(f)


def contract_from(channels: str | None):
    from features.contract import DEFAULT_CHANNELS, ContractConfig

    if not channels:
        return ContractConfig(channels=DEFAULT_CHANNELS)
    names = tuple(ch.strip() for ch in channels.split(",") if ch.strip())
    if not names:
        fail("--channels: give at least one channel name")
    return ContractConfig(channels=names)


data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data folder (default: the demo data under the working folder).",
)
tracking_option = click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: SQLite store under the working folder, or $OMNI_TRACKING_URI).",
)


# `omni --help` lists the commands in the order of their use, not alphabetically
LIFECYCLE_ORDER: tuple[str, ...] = (
    "generate",
    "import",
    "validate",
    "train",
    "promote",
    "rollback",
    "build",
    "serve",
    "recommend",
    "channel",
    "send-time",
    "decide",
    "profile",
)


class LifecycleGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in LIFECYCLE_ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))


@click.group(cls=LifecycleGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Omnichannel recommendations and next-best-action: data, training, scoring, serving.

    In the order of use: get data (generate or import, then validate), train, move champions by
    hand if needed (promote, rollback), build and serve, and score in batch (recommend, channel,
    send-time, decide, profile).
    """


@main.command()
@click.option("--customers", "n_customers", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--products", "n_products", type=click.IntRange(min=10), default=None, help="Catalogue size.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output folder.")
def generate(n_customers: int, seed: int, n_products: int | None, out_dir: Path | None) -> None:
    """Generate an omnichannel history with hidden ground truth (truth goes to OUT/truth/)."""
    from features.synthetic import generate as run_generate

    out_dir = out_dir or default_data_dir()
    try:
        summary = run_generate(n_customers, seed, out_dir, n_products=n_products, show_progress=True)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    click.echo(
        f"generated {out_dir} in {summary.seconds:.1f} s: "
        + ", ".join(f"{name}={rows}" for name, rows in summary.rows.items())
    )


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@channels_option
def validate(data_dir: Path, channels: str | None) -> None:
    """Check DATA_DIR against the data contract; report every problem (exit 2 if any error)."""
    from features.validation import validate_dir

    problems = validate_dir(data_dir, contract_from(channels))
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        click.echo(f"{p.severity}: {p}", err=True)
    if errors:
        click.echo(f"{len(errors)} error(s): {data_dir} does not meet the data contract", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"ok: {data_dir} meets the data contract ({len(problems)} warning(s))")


@main.command()
@data_option
@tracking_option
@channels_option
@click.option(
    "--test-days",
    type=click.IntRange(min=1),
    default=TrainConfig.test_days,
    show_default=True,
    help="Held-out window.",
)
@click.option(
    "--factors",
    type=click.IntRange(min=2),
    default=RecsConfig.factors,
    show_default=True,
    help="ALS factors.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=RecsConfig.iterations,
    show_default=True,
    help="ALS iterations.",
)
@click.option("--seed", type=int, default=TrainConfig.random_state, show_default=True)
@click.option(
    "--channel-eval-customers",
    type=click.IntRange(min=0),
    default=ChannelTrainingConfig.max_eval_customers,
    show_default=True,
    help="Fit and score the channel and send-time evaluation on a seeded sample of this many customers "
    "when there are more (0: all). The registered models are always fitted on every customer.",
)
@click.option(
    "--promotion-margin",
    "promotion_margins",
    multiple=True,
    metavar="[FAMILY=]MARGIN",
    help="A new model becomes champion only if its score on the new window ≥ the deployed champion's "
    "+ this margin (default 0); FAMILY=MARGIN sets one family's (recommender, channel, send_time, "
    "next_best_action). Repeatable.",
)
@click.option(
    "--conversion-window-days",
    type=click.FloatRange(min=0, min_open=True),
    default=NBAConfig.conversion_window_days,
    show_default=True,
    help="How long after a message a purchase counts as its conversion, for messages whose offer "
    "gives no validity (offers.duration_days).",
)
@click.option(
    "--dask-scheduler",
    metavar="ADDRESS",
    default=None,
    help="Run the feature build and the LightGBM fits on this Dask cluster (e.g. tcp://10.0.0.5:8786); "
    "ALS/EASE stay on this machine. Default: one process.",
)
def train(
    data_dir,
    tracking_uri,
    channels,
    test_days,
    factors,
    iterations,
    seed,
    channel_eval_customers,
    promotion_margins,
    conversion_window_days,
    dask_scheduler,
) -> None:
    """Validate, build features, then train every model family the data support: each evaluated on
    a time split beside its baselines, refitted on all data and registered.

    A family the data cannot support (no product ids: no recommender; no messages: no channel
    model) is skipped with one line saying why; the command exits 2 only when no family can be
    trained. Each new version is aliased `challenger`, and `champion` moves to it only when it is at
    least as good as the deployed champion on the same new window.
    """
    from features.problems import DataValidationError
    from training.distributed import SchedulerUnreachable
    from training.families import NothingTrained, parse_promotion_margins
    from training.train import format_result, run_training

    data_dir = data_dir or default_data_dir()
    try:
        margin, margins = parse_promotion_margins(promotion_margins)
    except ValueError as exc:
        fail(f"--promotion-margin {exc}")
    config = TrainConfig(
        test_days=test_days,
        random_state=seed,
        recommender=RecsConfig(factors=factors, iterations=iterations),
        engagement=ChannelTrainingConfig(max_eval_customers=channel_eval_customers or None),
        decisions=NBAConfig(conversion_window_days=conversion_window_days),
        promotion_margin=margin,
        promotion_margins=margins,
    )
    try:
        result = run_training(
            data_dir,
            tracking_uri or default_tracking_uri(),
            config,
            contract_from(channels),
            dask_scheduler=dask_scheduler,
        )
    except SchedulerUnreachable as exc:
        fail(f"{exc}; nothing was trained or registered")
    except DataValidationError as exc:
        fail(f"{data_dir} does not meet the data contract; nothing was trained or registered\n{exc}")
    except NothingTrained as exc:
        fail(f"{exc}; nothing was registered")
    except ValueError as exc:
        fail(f"{exc}; nothing was registered")
    click.echo(format_result(result))


@main.command()
@tracking_option
@click.option("--all", "all_customers", is_flag=True, help="Recommend for every customer of the model.")
@click.option("--customer", "customer_ids", multiple=True, help="A customer id (repeatable).")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option(
    "--exclude-purchased",
    is_flag=True,
    help="Only products the customer never bought (the list of new products).",
)
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), default=None, help="Parquet file to write."
)
def recommend(tracking_uri, all_customers, customer_ids, k, exclude_purchased, out_file) -> None:
    """Top-k products per customer from the champion recommender (Parquet with --out, else a table).

    The lists are what the service answers: the order the recommender chose on validation, with as
    many already-bought products as the data say; --exclude-purchased leaves those out. Products out
    of stock now (the live store's, set through /v1/inventory) are left out. Columns: customer_id,
    rank, product_id, score, reason, consented (may be messaged on at least one channel now, live
    opt-ins and opt-outs included), control_group (the contact policy's: never to be contacted).
    """
    from features.io import write_table_atomic
    from training.scoring import load_champion, recommendations_frame

    _ids_or_fail(all_customers, customer_ids, out_file)
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        rec, version = load_champion(tracking_uri, RECOMMENDER)
    except LookupError as exc:
        fail_missing(tracking_uri, "recommender", exc)
    from models.decisions.contact_policy import in_control_group, load_contact_policy
    from training.live import channel_consent

    ids = rec.customer_ids_.tolist() if all_customers else list(customer_ids)
    filters = {"exclude_purchased": True} if exclude_purchased else None
    with _live_store() as store:
        ids = store.resolve_many(ids)
        consented, note = channel_consent(tracking_uri, ids, None, store)
        unavailable = sorted(store.out_of_stock())
    if note:
        click.echo(f"note: {note}", err=True)
    frame = recommendations_frame(rec, ids, k, filters=filters, show_progress=True, exclude=unavailable)
    reachable = dict(zip(ids, consented, strict=True))
    frame["consented"] = frame["customer_id"].map(reachable).astype(bool)
    frame["control_group"] = in_control_group(frame["customer_id"].astype(str), load_contact_policy())
    if out_file:
        write_table_atomic(frame, out_file)
        click.echo(
            f"wrote {len(frame)} rows for {len(ids)} customers to {out_file} (model version {version})"
        )
    else:
        click.echo(frame.to_string(index=False))


def _live_store():
    """The live store (`OMNI_STORE_URL`, else the working folder's file), or exit 2 saying why."""
    from training.live import LiveStoreUnavailable, open_store

    try:
        return open_store()
    except LiveStoreUnavailable as exc:
        fail(str(exc))


def _ids_or_fail(all_customers: bool, customer_ids: tuple[str, ...], out_file) -> None:
    if not all_customers and not customer_ids:
        fail("give --all or at least one --customer")
    if all_customers and not out_file:
        fail("--all needs --out FILE (a Parquet file)")


def _emit(frame, out_file, what: str, version: str) -> None:
    from features.io import write_table_atomic

    if out_file:
        write_table_atomic(frame, out_file)
        click.echo(f"wrote {len(frame)} {what} rows to {out_file} (model version {version})")
    else:
        click.echo(frame.to_string(index=False))


@main.command()
@tracking_option
@click.option("--all", "all_customers", is_flag=True, help="Every customer the model knows.")
@click.option("--customer", "customer_ids", multiple=True, help="A customer id (repeatable).")
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), default=None, help="Parquet file to write."
)
@click.option(
    "--reasons-out", type=click.Path(path_type=Path), default=None, help="Why some have no channel."
)
def channel(tracking_uri, all_customers, customer_ids, out_file, reasons_out) -> None:
    """Each customer's consented channels, ranked by calibrated engagement probability.

    Parquet columns: customer_id, channel, rank, probability, conversion_probability, fallback
    (fallback = too little message history: the estimate comes from similar customers), consented
    (always true: only channels the customer consented to, live opt-ins and opt-outs included, are
    ranked), control_group (the contact policy's global control group: never to be contacted).
    """
    from training.scoring import load_champion

    _ids_or_fail(all_customers, customer_ids, out_file)
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        model, version = load_champion(tracking_uri, CHANNEL)
    except LookupError as exc:
        fail_missing(tracking_uri, "channel", exc)
    from models.decisions.contact_policy import in_control_group, load_contact_policy

    ids = model.customer_ids_.tolist() if all_customers else list(customer_ids)
    with _live_store() as store:
        ids = store.resolve_many(ids)
        changes = store.consent_changes(ids)
        # messages sent and opened or clicked since training count as history
        activity = store.message_activity(None if all_customers else ids, since=model.as_of_)
    # live opt-ins and opt-outs count
    ranked = model.rank_channels(ids, consent_changes=changes, live_activity=activity)
    ranked["consented"] = True  # only consented channels are ranked
    ranked["control_group"] = in_control_group(ranked["customer_id"], load_contact_policy())
    reasons = model.no_channel_reasons(ids)
    _emit(ranked, out_file, "channel", version)
    click.echo(f"{len(reasons)} of {len(ids)} customers have no channel to be reached on", err=True)
    if reasons_out:
        from features.io import write_table_atomic

        write_table_atomic(reasons, reasons_out)


@main.command(name="send-time")
@tracking_option
@click.option("--all", "all_customers", is_flag=True, help="Every customer the model knows.")
@click.option("--customer", "customer_ids", multiple=True, help="A customer id (repeatable).")
@click.option(
    "--channel", "channel_name", required=True, help="Channel the message goes out on (e.g. email)."
)
@click.option("--after", default=None, help="Earliest send time, ISO 8601 with a time zone (default: now).")
@click.option(
    "--quiet-hours",
    default=None,
    help="Local quiet hours START-END, or none (default: the contact policy's [quiet_hours], the same "
    "hours `omni decide` and the service keep).",
)
@click.option(
    "--policy",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Contact policy TOML whose quiet hours apply (default: configs/contact_policy.toml).",
)
@click.option("--horizon-hours", type=click.IntRange(1, 24 * 28), default=168, show_default=True)
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), default=None, help="Parquet file to write."
)
def send_time(
    tracking_uri,
    all_customers,
    customer_ids,
    channel_name,
    after,
    quiet_hours,
    policy,
    horizon_hours,
    out_file,
):
    """Best local hour and weekday per customer, and the next send moment in UTC outside quiet hours.

    Parquet columns: customer_id, channel, timezone, best_hour_local, best_weekday, next_send_utc, fallback,
    consented (the latest consent, live opt-ins and opt-outs included; next_send_utc is empty where
    false), control_group (the contact policy's global control group: never to be contacted).
    """
    import pandas as pd

    from models.engagement.local_time import parse_quiet_hours
    from training.scoring import load_champion

    _ids_or_fail(all_customers, customer_ids, out_file)
    try:
        quiet = parse_quiet_hours(quiet_hours) if quiet_hours is not None else None
        after_ts = pd.Timestamp(after) if after else pd.Timestamp.now(tz="UTC")
    except ValueError as exc:
        fail(f"--quiet-hours/--after: {exc}")
    if quiet_hours is None:  # one setting: the contact policy's
        from models.decisions.contact_policy import load_contact_policy

        try:
            quiet = load_contact_policy(policy).quiet_hours
        except (ValueError, KeyError) as exc:
            fail(f"--policy {policy}: {exc}")
    if after_ts.tzinfo is None:  # refused as everywhere (data contract, decide, the service)
        fail("--after: give a time zone, e.g. 2026-07-01T09:00:00+00:00")
    after_ts = after_ts.tz_convert("UTC")
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        model, version = load_champion(tracking_uri, SEND_TIME)
    except LookupError as exc:
        fail_missing(tracking_uri, "send_time", exc)
    from models.decisions.contact_policy import in_control_group, load_contact_policy
    from training.live import channel_consent

    ids = model.customer_ids_.tolist() if all_customers else list(customer_ids)
    with _live_store() as store:
        ids = store.resolve_many(ids)
        consented, note = channel_consent(tracking_uri, ids, channel_name, store)
        # opens and clicks since training are active hours the model has not seen
        activity = store.message_activity(None if all_customers else ids, since=model.as_of_)
    if note:
        click.echo(f"note: {note}", err=True)
    plan = model.send_plan(ids, channel_name, after_ts, quiet, horizon_hours, activity)
    # no send moment where the customer may not be messaged on the channel (the row stays, flagged)
    plan["consented"] = consented
    plan.loc[~plan["consented"], "next_send_utc"] = pd.NaT
    plan["control_group"] = in_control_group(plan["customer_id"], load_contact_policy(policy))
    _emit(plan, out_file, "send-time", version)
    click.echo(
        f"{int((~plan['consented']).sum())} of {len(plan)} customers have not consented to {channel_name}: no send moment",
        err=True,
    )


@main.command()
@click.argument("customer_id")
@tracking_option
def profile(customer_id, tracking_uri) -> None:
    """The unified profile of one customer as JSON; every field says how it was derived.

    CUSTOMER_ID may be the canonical id or any source id (loyalty card, app device id) the
    identities table or an event linked to it."""
    import json

    from training.scoring import load_champion_engine

    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        engine, _ = load_champion_engine(tracking_uri, warn=lambda m: None)
    except LookupError as exc:
        fail_missing(tracking_uri, "profiles", exc)
    try:
        with _live_store() as store:  # a source id (loyalty card, device id) names its customer
            customer_id = store.resolve(customer_id)
        click.echo(json.dumps(engine.profiles_.profile(customer_id), indent=2, default=str))
    except KeyError:
        fail(f"unknown customer {customer_id!r}: not in the data the champion models were trained on")


@main.command()
@tracking_option
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Bring consent and contact history up to this data folder first (default: as trained).",
)
@click.option("--customer", "customer_ids", multiple=True, help="Decide for these only (default: everyone).")
@click.option("--now", default=None, help="Decision time, ISO 8601 (default: the end of the training data).")
@click.option(
    "--policy", type=click.Path(path_type=Path, exists=True), default=None, help="Contact policy TOML."
)
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), required=True, help="Parquet file to write."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Decide without writing the sends to the shared contact ledger (a simulation).",
)
def decide(tracking_uri, data_dir, customer_ids, now, policy, out_file, dry_run) -> None:
    """Next-best-action for every customer (Parquet), respecting consent, caps, cooldowns, quiet hours
    and the control group across the whole batch.

    Columns: customer_id, action, channel, send_at (UTC), offer_id, product_ids, expected_gain,
    reasons (+ the parts of the expected gain), consented (opted in to at least one message channel
    now), control_group. With --data, consent and contact history are refreshed from that folder
    first (a later opt-out counts without retraining). The live store's contacts, purchases,
    consent changes and stock (what the service and the channel systems posted) count too, and the
    sends are written to its contact ledger, so the service and the next batch respect them
    (unless --dry-run).
    """
    import time as _time

    import pandas as pd

    from features.io import write_table_atomic
    from models.decisions.contact_policy import in_control_group
    from models.decisions.decision_core import DECISION_COLUMNS
    from training.scoring import load_champion_engine

    started = _time.perf_counter()
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        engine, versions = load_champion_engine(tracking_uri, warn=lambda m: click.echo(m, err=True))
    except LookupError as exc:
        fail_missing(tracking_uri, "next_best_action", exc)
    if policy:
        from models.decisions.contact_policy import load_contact_policy

        try:
            engine.policy_ = load_contact_policy(policy)
        except (ValueError, KeyError) as exc:
            fail(f"--policy {policy}: {exc}")
    if data_dir:
        from features.problems import DataValidationError
        from training.scoring import refresh_from_data

        try:
            refresh_from_data(engine, data_dir)
        except DataValidationError as exc:
            fail(f"{data_dir} does not meet the data contract\n{exc}")
    try:
        when = pd.Timestamp(now) if now else None
    except ValueError as exc:
        fail(f"--now: {exc}")
    if when is not None and when.tzinfo is None:
        fail("--now: give a time zone, e.g. 2026-07-01T09:00:00+00:00")
    from training.live import decide_batch

    ids = list(customer_ids) or engine.profiles_.frame_["customer_id"].astype(str).tolist()
    with _live_store() as store:
        # the sends are in the ledger before the file is written: a file that fails to write
        # leaves customers under-contacted, never a send the ledger does not know
        decisions, recorded, redecided = decide_batch(engine, store, ids, when, record=not dry_run)
    decisions["control_group"] = in_control_group(decisions["customer_id"], engine.policy_)
    write_table_atomic(decisions[[*DECISION_COLUMNS, "consented", "control_group"]], out_file)
    if redecided:
        click.echo(
            f"{redecided} customers were contacted, changed consent or bought while the batch decided: "
            "decided again on their new state",
            err=True,
        )
    counts = decisions["action"].value_counts().to_dict()
    click.echo(
        f"wrote {len(decisions)} decisions to {out_file} in {_time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{a}={n}" for a, n in sorted(counts.items()))
        + f"; expected gain {decisions['expected_gain'].sum():.2f} (models {versions}); "
        + (
            "dry run: nothing written to the contact ledger"
            if dry_run
            else f"{recorded} sends written to the contact ledger"
        )
    )


@main.command(name="import")
@click.option("--events", type=click.Path(path_type=Path), help="Events / transaction log (CSV or Parquet).")
@click.option("--messages", type=click.Path(path_type=Path))
@click.option("--customers", type=click.Path(path_type=Path))
@click.option("--identities", type=click.Path(path_type=Path))
@click.option("--consent", type=click.Path(path_type=Path))
@click.option("--products", type=click.Path(path_type=Path))
@click.option("--offers", type=click.Path(path_type=Path))
@click.option(
    "--map",
    "mappings",
    multiple=True,
    help="target=SourceColumn pairs, comma-separated; a plain target applies to every given table "
    "with that column, `table.target=Source` to one table only. events also take unit_price=Col "
    "(amount = quantity × unit price); customers take attributes as customers.attr.<name>=Col.",
)
@click.option("--channel", default=None, help="Channel for every event without a channel column.")
@click.option("--event-type", default=None, help="Event type for every event without one (e.g. purchase).")
@click.option(
    "--timezone",
    "assume_timezone",
    default=None,
    help="IANA zone of timestamps without an offset, and of every customer whose zone the customers "
    "table does not give (a customers table is written or completed with it; a warning gives the count).",
)
@click.option(
    "--ts-format",
    default=None,
    help="strftime format of source timestamps (e.g. '%d/%m/%Y %H:%M'), or 'unix' for seconds since "
    "the epoch (default: inferred; numeric day/month dates are read one way per column, never guessed).",
)
@click.option(
    "--dayfirst",
    is_flag=True,
    default=False,
    help="Numeric dates are day/month/year (01/07/2025 is 1 July). Without it, a column whose every "
    "date reads both ways stops the import.",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Data folder to write."
)
@channels_option
def import_command(
    events,
    messages,
    customers,
    identities,
    consent,
    products,
    offers,
    mappings,
    channel,
    event_type,
    assume_timezone,
    ts_format,
    dayfirst,
    out_dir,
    channels,
) -> None:
    """Map a retailer's own CSV/Parquet files into the data contract, validate, write OUT as Parquet.

    Example: omni import --events sales.csv --map customer_id=CustomerID,ts=InvoiceDate,product_id=StockCode,
    quantity=Quantity,unit_price=UnitPrice,order_id=InvoiceNo --channel store --event-type purchase
    --timezone Europe/London --out work/data/mine
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from features.importer import ImportSpec, import_tables, write_imported

    given = {
        "events": events,
        "messages": messages,
        "customers": customers,
        "identities": identities,
        "consent": consent,
        "products": products,
        "offers": offers,
    }
    sources = {name: path for name, path in given.items() if path is not None}
    if "events" not in sources:
        fail("--events is required (events is the one table every data folder needs)")
    if assume_timezone:
        try:
            ZoneInfo(assume_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            fail(
                f"--timezone: unknown time zone {assume_timezone!r}; expected an IANA name such as Europe/London"
            )
    try:
        from features.importer import parse_mapping

        mapping = parse_mapping(mappings, list(sources))
    except ValueError as exc:
        fail(str(exc))
    constants = {"events": {}}
    if channel:
        constants["events"]["channel"] = channel
    if event_type:
        constants["events"]["event_type"] = event_type
    if dayfirst and ts_format:
        fail("--dayfirst and --ts-format: give one of them (the format already says the order)")
    spec = ImportSpec(sources, mapping, constants, assume_timezone, ts_format, dayfirst=dayfirst)
    problems, frames = import_tables(spec, contract_from(channels))
    errors = [p for p in problems if p.severity == "error"]
    for p in errors + [p for p in problems if p.severity != "error"]:
        click.echo(f"{p.severity}: {p}", err=True)
    if errors:
        fail(f"{len(errors)} error(s); nothing was written")
    try:
        write_imported(frames, out_dir)
    except OSError as exc:
        fail(f"--out {out_dir}: cannot write the data folder: {exc.strerror or exc}")
    except Exception as exc:  # never a traceback: say what failed, nothing half-written (atomic)
        fail(f"--out {out_dir}: cannot write the data folder: {type(exc).__name__}: {exc}")
    click.echo(f"imported {', '.join(f'{n}={len(f)}' for n, f in frames.items())} into {out_dir}")


@main.command()
@tracking_option
@click.option("--no-bento", is_flag=True, help="Only import the models; skip `bentoml build`.")
@click.option(
    "--precompute-customers",
    type=click.IntRange(min=0),
    default=200_000,
    show_default=True,
    help="Compute the plain recommendation lists of at most this many customers ahead (the most "
    "recently active first; 0 = none, every request runs the model).",
)
@click.option(
    "--precompute-length",
    type=click.IntRange(min=1, max=1000),
    default=50,
    show_default=True,
    help="Ranked candidates kept per precomputed customer (requests for more take the live path).",
)
def build(tracking_uri, no_bento, precompute_customers, precompute_length) -> None:
    """Import the champion models into the BentoML model store and build the Bento (offline).

    Every model is optional as long as one is there: a family the last `omni train` skipped is left
    out with its reason, which the service then gives in its answers to that family's routes.
    """
    from training.build import PrecomputeSettings, build_bento, import_champions

    missing: list[str] = []
    try:
        imported = import_champions(
            tracking_uri or default_tracking_uri(),
            precompute=PrecomputeSettings(max_customers=precompute_customers, length=precompute_length),
            on_missing=missing.append,
        )
    except LookupError as exc:
        fail(str(exc))
    for m in imported:
        ahead = (
            f" (plain lists of {m.precomputed_customers} customers computed ahead)"
            if m.precomputed_customers
            else ""
        )
        click.echo(f"imported {m.name} version {m.mlflow_version} as {m.bento_tag}{ahead}")
    for line in missing:
        click.echo(f"warning: not served: {line}", err=True)
    if not no_bento:
        try:
            out = build_bento()
        except RuntimeError as exc:
            fail(str(exc))
        tag = next((line for line in out.splitlines() if "Successfully built Bento" in line), "").strip()
        click.echo(tag or "built the Bento")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=3000, show_default=True)
def serve(host, port) -> None:
    """Serve the models of the last `omni build` over HTTP (BentoML; OpenAPI at /docs.json)."""
    import os

    from training.build import served_manifest

    if not served_manifest()["models"]:
        fail("the BentoML model store holds no model: run `omni build` first")
    bentoml = Path(sys.executable).parent / "bentoml"
    click.echo(f"serving on http://{host}:{port} (OpenAPI: http://{host}:{port}/docs.json)", err=True)
    # this process becomes the server (signals reach it directly); it imports the service from
    # the project's root
    os.chdir(Path(__file__).resolve().parents[1])
    os.execv(bentoml, [str(bentoml), "serve", "serving.service:OmniService", "--host", host, "-p", str(port)])


model_name_option = click.option(
    "--model",
    "model_name",
    default=RECOMMENDER.name,
    show_default=True,
    help="Registered model name.",
)


@main.command()
@tracking_option
@model_name_option
@click.option("--version", default=None, help="Version to promote (default: the current challenger).")
def promote(tracking_uri, model_name, version) -> None:
    """Point the `champion` alias at a version by hand; `omni build` then imports it, and every
    running service worker serves it within OMNI_RELOAD_SECONDS (default 10 s), no restart."""
    from training.registry import promote as do_promote

    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        version = do_promote(_registered(tracking_uri, model_name), model_name, version)
    except LookupError as exc:
        fail(f"{exc}{_skip_hint(tracking_uri, model_name)}")
    click.echo(f"{model_name}: champion -> version {version}")


@main.command()
@tracking_option
@model_name_option
def rollback(tracking_uri, model_name) -> None:
    """Point `champion` back at the version it had before its last move (served after `omni build`,
    as for promote)."""
    from training.registry import rollback as do_rollback

    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        version = do_rollback(_registered(tracking_uri, model_name), model_name)
    except LookupError as exc:
        fail(f"{exc}{_skip_hint(tracking_uri, model_name)}")
    click.echo(f"{model_name}: champion rolled back to version {version}")


def _registered(tracking_uri: str, model_name: str):
    """A registry client, once `model_name` is known to be registered there (LookupError if not)."""
    from mlflow.exceptions import MlflowException

    from training.tracking import registry_client

    client = registry_client(tracking_uri)
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        raise LookupError(
            f"no model '{model_name}' in the registry at {tracking_uri}: run `omni train` first"
        ) from exc
    return client


def _skip_hint(tracking_uri: str, model_name: str) -> str:
    """ "; <why the last omni train did not train it>" for a registered model name whose family the
    last training run skipped, else ""."""
    from training.scoring import family_name, skip_explanation
    from training.tracking import latest_skip_reasons

    reasons = latest_skip_reasons(tracking_uri)
    try:
        families = by_name(model_name).families
    except KeyError:
        families = ()
    for family in families:
        why = skip_explanation(family, reasons)
        if why:
            return f"; no {family_name(family)} in that run: {why}"
    return ""


if __name__ == "__main__":
    main()
