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

from features.contract import DEFAULT_CHANNELS
from models.catalog import CHANNEL, RECOMMENDER, SEND_TIME, by_name
from training.batch import batch_options
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
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar (drawn only when stderr is a terminal anyway)."
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
    "report",
)


class LifecycleGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in LIFECYCLE_ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))


@click.group(cls=LifecycleGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Omnichannel recommendations and next-best-action: data, training, scoring, serving.

    In the order of use: get data (generate or import, then validate), train, move champions by
    hand if needed (promote, rollback), build and serve, score in batch (recommend, channel,
    send-time, decide, profile) and report (KPIs, lift, models beside baselines).
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
@quiet_option
def validate(data_dir: Path, channels: str | None, quiet: bool) -> None:
    """Check DATA_DIR against the data contract; report every problem (exit 2 if any error)."""
    from features.validation import validate_dir
    from training.progress import StageBar, progress_wanted

    contract = contract_from(channels)
    with StageBar("validate", ("read and check every table",), progress_wanted(quiet)) as bar:
        with bar.stage("read and check every table"):
            problems = validate_dir(data_dir, contract)
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
@quiet_option
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
    quiet,
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
    from training.progress import progress_wanted
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
            show_progress=progress_wanted(quiet),
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
@batch_options(
    "The channel the lists are for: only products sold there (repeatable: one list per channel, with a "
    "channel column). Default: no channel rule.",
    filters=True,
)
def recommend(tracking_uri, all_customers, customer_ids, k, exclude_purchased, out_file, batch) -> None:
    """Top-k products per customer from the champion recommender (Parquet with --out, else a table).

    The lists are what the service answers: the order the recommender chose on validation, with as
    many already-bought products as the data say; --exclude-purchased leaves those out. Products out
    of stock now (the live store's, set through /v1/inventory) are left out. Columns: customer_id,
    rank, product_id, score, reason, consented (may be messaged on at least one channel now, live
    opt-ins and opt-outs included), control_group (the contact policy's: never to be contacted).

    The audience (--customers, --segment, --active-within-days) and the product rules (--categories,
    --exclude-categories, --price-min/--price-max, --max-per-category, --exclude) are those of every
    batch command and of the /v1/recommend request; who was left out, and why, goes to
    <out stem>.left_out.csv.
    """
    import pandas as pd

    from features.io import write_table_atomic
    from models.decisions.contact_policy import in_control_group, load_contact_policy
    from training.audience import NO_ITEMS, LeftOut
    from training.live import channel_consent
    from training.progress import StageBar, progress_wanted
    from training.scoring import load_champion, recommendations_frame

    _batch_or_fail(all_customers, customer_ids, out_file, batch)
    tracking_uri = tracking_uri or default_tracking_uri()
    show = progress_wanted(batch.quiet)
    with StageBar("recommend", ("load", "audience", "recommend", "write"), show) as bar:
        with bar.stage("load"):
            try:
                rec, version = load_champion(tracking_uri, RECOMMENDER)
            except LookupError as exc:
                fail_missing(tracking_uri, "recommender", exc)
            try:
                filters = batch.filters(getattr(rec, "categories_", None), exclude_purchased)
                channels = batch.checked_channels(getattr(rec, "channels_", DEFAULT_CHANNELS))
                excluded = batch.excluded_products()
            except ValueError as exc:
                fail(str(exc))
        with bar.stage("audience"), _live_store() as store:
            ids = store.resolve_many(_universe(all_customers, customer_ids, batch, rec.customer_ids_))
            selection = _audience(batch, ids, store, rec.as_of_, tracking_uri)
            ids = selection.customer_ids
            consented, note = channel_consent(tracking_uri, ids, [None], store)[None]
            unavailable = sorted(set(store.out_of_stock()) | set(excluded))
        with bar.stage("recommend"):
            lists = []
            for name in channels or (None,):
                part = recommendations_frame(
                    rec, ids, k, filters=filters, show_progress=show, exclude=unavailable, channel=name
                )
                if channels:
                    part.insert(1, "channel", pd.Series(name, index=part.index, dtype="string"))
                lists.append(part)
            frame = pd.concat(lists, ignore_index=True)
        with bar.stage("write"):
            reachable = dict(zip(ids, consented, strict=True))
            frame["consented"] = frame["customer_id"].map(reachable).astype(bool)
            frame["control_group"] = in_control_group(frame["customer_id"].astype(str), load_contact_policy())
            if out_file:
                write_table_atomic(frame, out_file)
    left = LeftOut()
    left.add(selection.left_out)
    left.add_ids(sorted(set(ids) - set(frame["customer_id"].astype(str))), NO_ITEMS)
    if note:
        click.echo(f"note: {note}", err=True)
    if out_file:
        click.echo(
            f"wrote {len(frame)} rows for {len(ids)} customers to {out_file} (model version {version})"
        )
    else:
        click.echo(frame.to_string(index=False))
    _finish(left, out_file, batch)


def _live_store():
    """The live store (`OMNI_STORE_URL`, else the working folder's file), or exit 2 saying why."""
    from training.live import LiveStoreUnavailable, open_store

    try:
        return open_store()
    except LiveStoreUnavailable as exc:
        fail(str(exc))


def _batch_or_fail(all_customers: bool, customer_ids: tuple[str, ...], out_file, batch) -> None:
    """Exit 2 before any work when the command is not told whom to score, or where to write."""
    from training.batch import check_out_file

    if not all_customers and not customer_ids and not batch.is_batch:
        fail("give --all, --customers FILE or at least one --customer")
    if (all_customers or batch.is_batch) and not out_file:
        fail("--all and --customers need --out FILE (a Parquet file)")
    try:
        check_out_file(out_file)
        check_out_file(batch.left_out, "--left-out")
        if batch.segments:  # the profile rules' segments: refused before any model is loaded
            from training.audience import check_segments

            check_segments(batch.segments)
    except ValueError as exc:
        fail(str(exc))


def _universe(all_customers: bool, customer_ids: tuple[str, ...], batch, known) -> list[str]:
    """The customers a batch starts from: the --customer ids, else every customer the model knows
    (the audience options then narrow them)."""
    if customer_ids and not all_customers:
        return list(customer_ids)
    return [str(x) for x in known]


def _audience(batch, universe: list[str], store, reference, tracking_uri: str, profiles=None):
    """The audience's customers of `universe` and who was left out (`training.batch.audience_of`),
    or exit 2 saying why. `profiles`: the fitted `CustomerProfiles` when the command has them (else
    the champion next-best-action model's are loaded, only for --segment)."""
    from models.catalog import NBA
    from training.batch import audience_of
    from training.scoring import load_champion

    def fitted_profiles():
        if profiles is not None:
            return profiles
        try:
            return load_champion(tracking_uri, NBA)[0].profiles_
        except LookupError as exc:
            fail(f"--segment needs the customer profiles: {_missing(tracking_uri, 'profiles', exc)}")

    try:
        return audience_of(batch, universe, store, reference, fitted_profiles, default_data_dir)
    except ValueError as exc:
        fail(str(exc))


def _missing(tracking_uri: str, family: str, error: Exception) -> str:
    from training.scoring import missing_champion_message

    return missing_champion_message(tracking_uri, family, error)


def _finish(left, out_file, batch) -> None:
    """The left-out file and its summary on stderr (`training.batch.finish`)."""
    from training.batch import finish

    try:
        finish(left, out_file, batch.left_out, lambda line: click.echo(line, err=True))
    except OSError as exc:
        fail(f"--left-out: cannot write the left-out list: {exc}")


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
@batch_options(
    "Only these channels' rows, ranked among themselves (repeatable or comma-separated; default: "
    "every channel the model knows)."
)
def channel(tracking_uri, all_customers, customer_ids, out_file, reasons_out, batch) -> None:
    """Each customer's consented channels, ranked by calibrated engagement probability.

    Parquet columns: customer_id, channel, rank, probability, conversion_probability, fallback
    (fallback = too little message history: the estimate comes from similar customers), consented
    (always true: only channels the customer consented to, live opt-ins and opt-outs included, are
    ranked), control_group (the contact policy's global control group: never to be contacted).
    The audience options are those of every batch command; customers left out, and those with no
    consented channel among --channel (no_channel), are listed in <out stem>.left_out.csv.
    """
    from models.decisions.contact_policy import in_control_group, load_contact_policy
    from training.audience import NO_CHANNEL, LeftOut
    from training.progress import StageBar, progress_wanted
    from training.scoring import load_champion

    _batch_or_fail(all_customers, customer_ids, out_file, batch)
    tracking_uri = tracking_uri or default_tracking_uri()
    with StageBar("channel", ("load", "audience", "rank", "write"), progress_wanted(batch.quiet)) as bar:
        with bar.stage("load"):
            try:
                model, version = load_champion(tracking_uri, CHANNEL)
            except LookupError as exc:
                fail_missing(tracking_uri, "channel", exc)
            try:
                channels = batch.checked_channels(model.channels_)
            except ValueError as exc:
                fail(str(exc))
        with bar.stage("audience"), _live_store() as store:
            ids = store.resolve_many(_universe(all_customers, customer_ids, batch, model.customer_ids_))
            selection = _audience(batch, ids, store, model.as_of_, tracking_uri)
            ids = selection.customer_ids
            changes = store.consent_changes(ids)
            # messages sent and opened or clicked since training count as history
            activity = store.message_activity(None if all_customers else ids, since=model.as_of_)
        with bar.stage("rank"):
            # live opt-ins and opt-outs count
            ranked = model.rank_channels(ids, consent_changes=changes, live_activity=activity)
            if channels:
                ranked = ranked.loc[ranked["channel"].isin(channels)].sort_values(
                    ["customer_id", "rank"], kind="stable"
                )
                ranked["rank"] = (ranked.groupby("customer_id").cumcount() + 1).astype(ranked["rank"].dtype)
                ranked = ranked.reset_index(drop=True)
            ranked["consented"] = True  # only consented channels are ranked
            ranked["control_group"] = in_control_group(ranked["customer_id"], load_contact_policy())
            reasons = model.no_channel_reasons(ids)
        with bar.stage("write"):
            if out_file:
                from features.io import write_table_atomic

                write_table_atomic(ranked, out_file)
            if reasons_out:
                from features.io import write_table_atomic

                write_table_atomic(reasons, reasons_out)
    if out_file:
        click.echo(f"wrote {len(ranked)} channel rows to {out_file} (model version {version})")
    else:
        click.echo(ranked.to_string(index=False))
    click.echo(f"{len(reasons)} of {len(ids)} customers have no channel to be reached on", err=True)
    left = LeftOut()
    left.add(selection.left_out)
    left.add_ids(sorted(set(ids) - set(ranked["customer_id"].astype(str))), NO_CHANNEL)
    _finish(left, out_file, batch)


@main.command(name="send-time")
@tracking_option
@click.option("--all", "all_customers", is_flag=True, help="Every customer the model knows.")
@click.option("--customer", "customer_ids", multiple=True, help="A customer id (repeatable).")
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
@batch_options(
    "Channel the message goes out on (e.g. email); repeatable or comma-separated: one row per customer "
    "and channel.",
    channel_required=True,
)
def send_time(
    tracking_uri,
    all_customers,
    customer_ids,
    after,
    quiet_hours,
    policy,
    horizon_hours,
    out_file,
    batch,
):
    """Best local hour and weekday per customer, and the next send moment in UTC outside quiet hours.

    Parquet columns: customer_id, channel, timezone, best_hour_local, best_weekday, next_send_utc, fallback,
    consented (the latest consent, live opt-ins and opt-outs included; next_send_utc is empty where
    false), control_group (the contact policy's global control group: never to be contacted).
    The audience options are those of every batch command; customers left out, and those consented
    to none of the --channel channels (no_consent: their rows stay, without a send moment), are
    listed in <out stem>.left_out.csv.
    """
    import pandas as pd

    from features.input_checks import aware_time
    from models.decisions.contact_policy import in_control_group, load_contact_policy
    from models.engagement.local_time import parse_quiet_hours
    from training.audience import NO_CONSENT, LeftOut, split_names
    from training.live import channel_consent
    from training.progress import StageBar, progress_wanted
    from training.scoring import load_champion

    _batch_or_fail(all_customers, customer_ids, out_file, batch)
    try:
        quiet = parse_quiet_hours(quiet_hours) if quiet_hours is not None else None
    except ValueError as exc:
        fail(f"--quiet-hours: {exc}")
    try:  # refused as everywhere (data contract, decide, the service): a time without its zone
        after_ts = aware_time(after, "--after") if after else pd.Timestamp.now(tz="UTC")
    except ValueError as exc:
        fail(str(exc))
    try:
        contact_policy = load_contact_policy(policy)
    except (ValueError, KeyError) as exc:
        fail(f"--policy {policy}: {exc}")
    if quiet_hours is None:  # one setting: the contact policy's
        quiet = contact_policy.quiet_hours
    tracking_uri = tracking_uri or default_tracking_uri()
    stages = ("load", "audience", *(f"plan {name}" for name in split_names(batch.channels)), "write")
    with StageBar("send-time", stages, progress_wanted(batch.quiet)) as bar:
        with bar.stage("load"):
            try:
                model, version = load_champion(tracking_uri, SEND_TIME)
            except LookupError as exc:
                fail_missing(tracking_uri, "send_time", exc)
            try:  # any channel of the contract (without message history: the customer's own hours)
                channels = batch.checked_channels(dict.fromkeys([*DEFAULT_CHANNELS, *model.channels_]))
            except ValueError as exc:
                fail(str(exc))
        with bar.stage("audience"), _live_store() as store:
            ids = store.resolve_many(_universe(all_customers, customer_ids, batch, model.customer_ids_))
            selection = _audience(batch, ids, store, model.as_of_, tracking_uri)
            ids = selection.customer_ids
            consent = channel_consent(tracking_uri, ids, channels, store)
            notes = [note for _, note in consent.values() if note]
            # opens and clicks since training are active hours the model has not seen
            activity = store.message_activity(None if all_customers else ids, since=model.as_of_)
        plans = []
        for name in channels:
            with bar.stage(f"plan {name}"):
                plan = model.send_plan(ids, name, after_ts, quiet, horizon_hours, activity)
                # no send moment where the customer may not be messaged on the channel (the row
                # stays, flagged)
                plan["consented"] = consent[name][0]
                plan.loc[~plan["consented"], "next_send_utc"] = pd.NaT
                plans.append(plan)
        plan = pd.concat(plans, ignore_index=True)
        plan["control_group"] = in_control_group(plan["customer_id"], contact_policy)
        with bar.stage("write"):
            if out_file:
                from features.io import write_table_atomic

                write_table_atomic(plan, out_file)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if out_file:
        click.echo(f"wrote {len(plan)} send-time rows to {out_file} (model version {version})")
    else:
        click.echo(plan.to_string(index=False))
    for name, (allowed, _) in consent.items():
        click.echo(
            f"{int((~allowed).sum())} of {len(allowed)} customers have not consented to {name}: no send moment",
            err=True,
        )
    left = LeftOut()
    left.add(selection.left_out)
    reachable = set(plan.loc[plan["consented"], "customer_id"].astype(str))
    left.add_ids([x for x in ids if x not in reachable], NO_CONSENT)
    _finish(left, out_file, batch)


@main.command()
@click.argument("customer_id", required=False)
@tracking_option
@click.option(
    "--all", "all_customers", is_flag=True, help="Every customer's profile, one row each (needs --out)."
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    default=None,
    help="With --all: the file to write, Parquet (.parquet) or CSV (.csv, .csv.gz; lists as JSON text).",
)
def profile(customer_id, tracking_uri, all_customers, out_file) -> None:
    """The unified profile of one customer as JSON; every field says how it was derived.

    CUSTOMER_ID may be the canonical id or any source id (loyalty card, app device id) the
    identities table or an event linked to it. With --all --out FILE: every customer the champion
    models know, one row each, every profile field as a column (segment, RFM, spend and churn
    forecasts, lifetime value: expected_purchases_365d, prob_active, expected_order_value,
    clv_365d; price sensitivity, categories, channel, hours, consent, last contact and purchase)."""
    import json

    from training.scoring import load_champion_engine

    if all_customers and customer_id:
        fail("give CUSTOMER_ID or --all, not both")
    if not all_customers and not customer_id:
        fail("give a CUSTOMER_ID, or --all --out FILE for every customer")
    if all_customers and not out_file:
        fail("--all needs --out FILE (.parquet, .csv or .csv.gz)")
    if out_file and not all_customers:
        fail("--out is for --all; one customer's profile is printed as JSON")
    if out_file and not str(out_file).endswith((".parquet", ".csv", ".csv.gz")):
        fail(f"--out {out_file}: cannot tell the format (use .parquet, .csv or .csv.gz)")
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        engine, versions = load_champion_engine(tracking_uri, warn=lambda m: None)
    except LookupError as exc:
        fail_missing(tracking_uri, "profiles", exc)
    if all_customers:
        from features.io import write_table_atomic

        frame = engine.profiles_.profiles_frame()
        if not str(out_file).endswith(".parquet"):  # CSV: list columns as JSON text, not Python reprs
            for col in ("top_categories", "preferred_hours"):
                frame[col] = frame[col].map(lambda values: json.dumps(list(values)))
        write_table_atomic(frame, out_file)
        models = ", ".join(f"{name} {v}" for name, v in versions.items())
        click.echo(f"wrote {len(frame)} customer profiles to {out_file} (model versions: {models})")
        return
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
    help="Bring consent and contact history up to this data folder first (default: as trained); "
    "--active-within-days reads the activity from it (default: the demo data).",
)
@click.option("--customer", "customer_ids", multiple=True, help="Decide for these only (default: everyone).")
@click.option(
    "--now",
    default=None,
    help="Decision time, ISO 8601 with a time zone (default: the end of the training data).",
)
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
@batch_options(
    "Only actions on these channels (repeatable or comma-separated; default: the contact policy's).",
    filters=True,
    data=False,
)
def decide(tracking_uri, data_dir, customer_ids, now, policy, out_file, dry_run, batch) -> None:
    """Next-best-action for every customer (Parquet), respecting consent, caps, cooldowns, quiet hours
    and the control group across the whole batch.

    Columns: customer_id, action, channel, send_at (UTC), offer_id, product_ids, expected_gain,
    reasons (+ the parts of the expected gain), consented (opted in to at least one message channel
    now), control_group. With --data, consent and contact history are refreshed from that folder
    first (a later opt-out counts without retraining). The live store's contacts, purchases,
    consent changes and stock (what the service and the channel systems posted) count too, and the
    sends are written to its contact ledger, so the service and the next batch respect them
    (unless --dry-run).

    The audience options are those of every batch command; the product rules apply to the items of
    product messages (--exclude to every message's items). Customers left out, and those whose
    decision is no action (with the decision's reason, e.g. control_group, no_consent,
    frequency_cap), are listed in <out stem>.left_out.csv.
    """
    import dataclasses
    import time as _time

    from features.input_checks import aware_time
    from features.io import write_table_atomic
    from models.decisions.contact_policy import in_control_group
    from models.decisions.decision_core import DECISION_COLUMNS, NO_ACTION
    from training.audience import LeftOut
    from training.live import decide_batch
    from training.progress import StageBar, progress_wanted
    from training.scoring import load_champion_engine

    started = _time.perf_counter()
    _batch_or_fail(True, customer_ids, out_file, batch)
    try:
        when = aware_time(now, "--now") if now else None
    except ValueError as exc:
        fail(str(exc))
    tracking_uri = tracking_uri or default_tracking_uri()
    stages = ("load", "refresh", "audience", "decide", "write")
    with StageBar("decide", stages, progress_wanted(batch.quiet)) as bar:
        with bar.stage("load"):
            warnings: list[str] = []
            try:
                engine, versions = load_champion_engine(tracking_uri, warn=warnings.append)
            except LookupError as exc:
                fail_missing(tracking_uri, "next_best_action", exc)
            if policy:
                from models.decisions.contact_policy import load_contact_policy

                try:
                    engine.policy_ = load_contact_policy(policy)
                except (ValueError, KeyError) as exc:
                    fail(f"--policy {policy}: {exc}")
            try:
                channels = batch.checked_channels(engine.policy_.channels)
                categories = getattr(engine.recommender_, "categories_", None)
                filters = batch.filters(categories)
                excluded = frozenset(batch.excluded_products())
            except ValueError as exc:
                fail(str(exc))
            if channels:  # the policy's channels, narrowed: caps and capacities of the others go
                engine.policy_ = _policy_on(engine.policy_, channels)
        if data_dir:
            with bar.stage("refresh"):
                from features.problems import DataValidationError
                from training.scoring import refresh_from_data

                try:
                    refresh_from_data(engine, data_dir)
                except DataValidationError as exc:
                    fail(f"{data_dir} does not meet the data contract\n{exc}")
        with _live_store() as store:
            with bar.stage("audience"):
                known = engine.profiles_.frame_["customer_id"].astype(str)
                ids = store.resolve_many(_universe(False, customer_ids, batch, known))
                activity = dataclasses.replace(batch, data_dir=data_dir)
                reference = when if when is not None else engine.profiles_.as_of_
                selection = _audience(activity, ids, store, reference, tracking_uri, engine.profiles_)
                ids = selection.customer_ids
            with bar.stage("decide"):
                # the sends are in the ledger before the file is written: a file that fails to write
                # leaves customers under-contacted, never a send the ledger does not know
                decisions, recorded, redecided = decide_batch(
                    engine, store, ids, when, record=not dry_run, excluded=excluded, item_filters=filters
                )
        with bar.stage("write"):
            decisions["control_group"] = in_control_group(decisions["customer_id"], engine.policy_)
            write_table_atomic(decisions[[*DECISION_COLUMNS, "consented", "control_group"]], out_file)
    if redecided:
        click.echo(
            f"{redecided} customers were contacted, changed consent or bought while the batch decided: "
            "decided again on their new state",
            err=True,
        )
    for line in warnings:
        click.echo(line, err=True)
    if filters is not None and engine.recommender_ is None:
        click.echo(
            "note: no recommender: the decisions carry no items for the product rules to apply to", err=True
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
    left = LeftOut()
    left.add(selection.left_out)
    idle = decisions.loc[decisions["action"] == NO_ACTION]
    left.add_ids(idle["customer_id"], [r[0] if len(r) else NO_ACTION for r in idle["reasons"]])
    _finish(left, out_file, batch)


def _policy_on(policy, channels: tuple[str, ...]):
    """The contact policy with only `channels` to send on (their caps, capacities and costs kept)."""
    import dataclasses

    return dataclasses.replace(
        policy,
        channels=channels,
        channel_caps={ch: caps for ch, caps in policy.channel_caps.items() if ch in channels},
        capacity_per_day={ch: n for ch, n in policy.capacity_per_day.items() if ch in channels},
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
@quiet_option
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
    quiet,
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
    contract = contract_from(channels)
    constants = {"events": {}}
    if channel:  # an unknown one is reported with every other problem of the rows (data contract)
        constants["events"]["channel"] = channel
    if event_type:
        constants["events"]["event_type"] = event_type
    if dayfirst and ts_format:
        fail("--dayfirst and --ts-format: give one of them (the format already says the order)")
    from training.progress import StageBar, progress_wanted

    spec = ImportSpec(sources, mapping, constants, assume_timezone, ts_format, dayfirst=dayfirst)
    with StageBar("import", ("read, map and check", "write"), progress_wanted(quiet)) as bar:
        with bar.stage("read, map and check"):
            problems, frames = import_tables(spec, contract)
        errors = [p for p in problems if p.severity == "error"]
        for p in errors + [p for p in problems if p.severity != "error"]:
            bar.write(f"{p.severity}: {p}")
        if errors:
            fail(f"{len(errors)} error(s); nothing was written")
        with bar.stage("write"):
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
@quiet_option
def build(tracking_uri, no_bento, precompute_customers, precompute_length, quiet) -> None:
    """Import the champion models into the BentoML model store and build the Bento (offline).

    Every model is optional as long as one is there: a family the last `omni train` skipped is left
    out with its reason, which the service then gives in its answers to that family's routes.
    """
    from training.build import PrecomputeSettings, build_bento, import_champions
    from training.progress import StageBar, progress_wanted

    missing: list[str] = []
    stages = ("import the champions", *(() if no_bento else ("build the Bento",)))
    with StageBar("build", stages, progress_wanted(quiet)) as bar:
        with bar.stage("import the champions"):
            try:
                imported = import_champions(
                    tracking_uri or default_tracking_uri(),
                    precompute=PrecomputeSettings(
                        max_customers=precompute_customers, length=precompute_length
                    ),
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
            bar.write(f"imported {m.name} version {m.mlflow_version} as {m.bento_tag}{ahead}", err=False)
        for line in missing:
            bar.write(f"warning: not served: {line}")
        if not no_bento:
            with bar.stage("build the Bento"):
                try:
                    out = build_bento()
                except RuntimeError as exc:
                    fail(str(exc))
    if not no_bento:
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


@main.command()
@data_option
@tracking_option
@channels_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder to write.",
)
@click.option(
    "--policy",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Contact policy TOML: its control group and quiet hours (default: configs/contact_policy.toml).",
)
@click.option(
    "--lift-window-days",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    help="Lift against the control group over this many days before the end of the data.",
)
@click.option(
    "--attribution-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="A purchase this many days after a message counts as its conversion (default: the training "
    "run's --conversion-window-days).",
)
def report(data_dir, tracking_uri, channels, out_dir, policy, lift_window_days, attribution_days) -> None:
    """The marketer's report of a data folder: OUT/report.html (one self-contained page with its
    charts) and OUT/report.md.

    KPIs per month and channel (revenue, orders, AOV, repeat purchases, cohort retention,
    cross-channel value, journeys, message conversion and engagement by local hour), the lift of the
    messaging against the global control group with 95% intervals, segments, churn and lifetime
    value, and each model's quality beside its baselines from the latest `omni train`. Both files
    are logged to that run, and the page is what the service answers at GET /report.
    """
    from features.problems import DataValidationError
    from models.decisions.contact_policy import load_contact_policy
    from training.reporting import write_report

    data_dir = data_dir or default_data_dir()
    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        contact_policy = load_contact_policy(policy)
    except (ValueError, KeyError) as exc:
        fail(f"--policy {policy}: {exc}")
    try:
        written = write_report(
            data_dir,
            tracking_uri,
            out_dir,
            policy=contact_policy,
            lift_window_days=lift_window_days,
            attribution_days=attribution_days,
            contract=contract_from(channels),
        )
    except DataValidationError as exc:
        fail(f"{data_dir} does not meet the data contract; no report was written\n{exc}")
    except OSError as exc:
        fail(f"--out {out_dir}: cannot write the report: {exc.strerror or exc}")
    for note in written.notes:
        click.echo(f"note: {note}", err=True)
    logged = f"; logged to run {written.run_id}" if written.run_id else ""
    click.echo(f"wrote {out_dir / 'report.html'} and {out_dir / 'report.md'}{logged}")


if __name__ == "__main__":
    main()
