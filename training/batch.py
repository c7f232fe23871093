"""The options every campaign batch command takes, and the steps they share (`training.cli`).

`omni recommend`, `omni channel`, `omni send-time` and `omni decide` take one set of audience
options (`training.audience`: `--customers FILE`, `--segment`, `--active-within-days`), `--channel`
(repeatable; checked by `features.input_checks.check_channel` against the channels the model
knows), `--left-out FILE` and `--quiet`; `omni recommend` and `omni decide` also take the product
rules of the HTTP request's `filters` and `exclude`. The helpers raise ValueError (bad input: the
command exits 2 with the message) or LookupError (a model the option needs is missing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from features import columns as c

if TYPE_CHECKING:  # the options are declared when `omni` starts: pandas and the models load later
    import pandas as pd

    from training.audience import LeftOut, Selection

OUT_SUFFIXES = (".parquet", ".csv", ".csv.gz")


@dataclass(frozen=True)
class BatchOptions:
    """The values of the shared batch options of one command run."""

    customers_file: Path | None = None
    segments: tuple[str, ...] = ()
    active_within_days: int | None = None
    channels: tuple[str, ...] = ()
    data_dir: Path | None = None
    left_out: Path | None = None
    quiet: bool = False
    categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    max_per_category: int | None = None
    exclude_file: Path | None = None

    @property
    def is_batch(self) -> bool:
        """The options name the customers themselves (no --all or --customer needed)."""
        return self.customers_file is not None

    def filters(self, known_categories=None, exclude_purchased: bool = False):
        """`models.recs.rules.Filters` of the product options (None: no rule); ValueError naming an
        unknown category or a price range that is not one."""
        from training.audience import recommend_filters

        return recommend_filters(
            self.categories,
            self.exclude_categories,
            self.price_min,
            self.price_max,
            self.max_per_category,
            exclude_purchased,
            known_categories,
        )

    def excluded_products(self) -> list[str]:
        """The product ids of `--exclude FILE` (none without it)."""
        from training.audience import read_ids

        if self.exclude_file is None:
            return []
        return read_ids(self.exclude_file, c.PRODUCT_ID, "--exclude")

    def checked_channels(self, known) -> tuple[str, ...]:
        """`--channel` values (repeatable or comma-separated), each a channel the model knows."""
        from features.input_checks import check_channels

        return check_channels(self.channels, tuple(known), "--channel")


_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


def _audience_options(data: bool) -> list:
    options = [
        click.option(
            "--customers",
            "customers_file",
            type=_FILE,
            default=None,
            help="Only these customers: a Parquet/CSV file with a customer_id column, or one id per line "
            "(canonical or source ids). Ids no model knows are left out as unknown_customer.",
        ),
        click.option(
            "--segment",
            "segments",
            multiple=True,
            metavar="NAME",
            help="Only customers of this profile segment (new, active, loyal, champion, at_risk, "
            "dormant); repeatable or comma-separated.",
        ),
        click.option(
            "--active-within-days",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Only customers with an event or a message response in the N days before the end of "
            "the training data (decide: before --now), read from --data, or a purchase, open or click "
            "posted to the live store since.",
        ),
        click.option(
            "--left-out",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="CSV of customer_id,reason for every customer the batch left out (default: "
            "<out stem>.left_out.csv beside --out).",
        ),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bar (drawn only on a terminal anyway)."
        ),
    ]
    if data:
        options.append(
            click.option(
                "--data",
                "data_dir",
                type=click.Path(path_type=Path),
                default=None,
                help="Data folder whose events and messages --active-within-days reads (default: the "
                "demo data under the working folder).",
            )
        )
    return options


def _filter_options() -> list:
    return [
        click.option(
            "--categories",
            multiple=True,
            metavar="NAMES",
            help="Only products of these categories (comma-separated or repeatable).",
        ),
        click.option(
            "--exclude-categories",
            multiple=True,
            metavar="NAMES",
            help="Never products of these categories (comma-separated or repeatable).",
        ),
        click.option("--price-min", type=click.FloatRange(min=0), default=None, help="Lowest price."),
        click.option("--price-max", type=click.FloatRange(min=0), default=None, help="Highest price."),
        click.option(
            "--max-per-category",
            type=click.IntRange(1, 100),
            default=None,
            help="At most this many products of one category in a list.",
        ),
        click.option(
            "--exclude",
            "exclude_file",
            type=_FILE,
            default=None,
            help="Products never to recommend: a Parquet/CSV file with a product_id column, or one id per line.",
        ),
    ]


def batch_options(
    channel_help: str, filters: bool = False, data: bool = True, channel_required: bool = False
):
    """Adds the shared batch options to a command, which then gets them as one `batch`
    (`BatchOptions`) argument. Put it right above the function, below the command's own options."""
    channel = click.option(
        "--channel",
        "channels",
        multiple=True,
        required=channel_required,
        metavar="NAME",
        help=channel_help,
    )
    options = [channel, *_audience_options(data), *(_filter_options() if filters else [])]
    # the options' own names only: a command may have an option of the same name (decide's --data)
    names = {param.name for option in options for param in _params_of(option)}

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(*args, **kwargs):
            given = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
            for name in ("segments", "channels", "categories", "exclude_categories"):
                if name in given:
                    given[name] = tuple(given[name])
            return command(*args, batch=BatchOptions(**given), **kwargs)

        for option in reversed(options):
            run = option(run)
        return run

    return decorate


def _params_of(option) -> list:
    """The click parameters a `click.option(...)` decorator adds."""

    def probe():
        pass

    option(probe)
    return probe.__click_params__


def check_out_file(out_file: Path | None, option: str = "--out") -> None:
    """ValueError before any work when a file to write has a suffix no writer knows."""
    if out_file is not None and not str(out_file).endswith(OUT_SUFFIXES):
        raise ValueError(f"{option} {out_file}: give a .parquet, .csv or .csv.gz file")


def audience_of(
    batch: BatchOptions,
    universe: list[str],
    store,
    reference: pd.Timestamp | None,
    profiles: Callable[[], object] | None,
    default_data_dir: Callable[[], Path],
) -> Selection:
    """The batch's customers among `universe` (canonical ids), with who was left out and why.

    `reference`: the end of the activity window (the end of the training data, or `--now`);
    `profiles`: returns the fitted `CustomerProfiles` (called only for `--segment`; LookupError
    when there are none). ValueError on a bad option value (an unknown segment, a file without
    ids, a data folder that breaks the contract)."""
    import pandas as pd

    from training.audience import (
        Audience,
        check_segments,
        latest_per_customer,
        live_activity,
        read_ids,
        segments_of,
        select,
    )

    if reference is None:  # a model that does not say when its data ended: the activity until now
        reference = pd.Timestamp.now(tz="UTC")
    listed = None
    if batch.customers_file is not None:
        listed = tuple(store.resolve_many(read_ids(batch.customers_file, c.CUSTOMER_ID, "--customers")))
    segment_of = None
    segments: tuple[str, ...] = ()
    if batch.segments:
        fitted = profiles() if profiles is not None else None
        if fitted is None:
            raise LookupError("--segment needs the customer profiles")
        segment_of = segments_of(fitted)
        segments = check_segments(batch.segments, segment_of.unique())
    since = None
    last = None
    if batch.active_within_days is not None:
        since = pd.Timestamp(reference) - pd.Timedelta(days=batch.active_within_days)
        last = latest_per_customer(
            [
                _as_frame(activity_in_data(batch.data_dir or default_data_dir())),
                _as_frame(live_activity(store, since)),
            ]
        )
    audience = Audience(customers=listed, segments=segments, active_since=since)
    return select(universe, audience, segment_of, last)


def _as_frame(last: pd.Series) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({c.CUSTOMER_ID: last.index.astype(str), c.TS: last.to_numpy()})


def activity_in_data(data_dir: Path) -> pd.Series:
    """customer → latest activity in a data folder (loaded and stitched as for training)."""
    from features.identity import stitch_identities
    from features.io import load_tables
    from features.problems import DataValidationError
    from training.audience import last_activity

    try:
        tables = stitch_identities(load_tables(data_dir))
    except DataValidationError as exc:
        raise ValueError(
            f"--active-within-days reads the activity from --data {data_dir}, which does not meet the "
            f"data contract\n{exc}"
        ) from None
    return last_activity(tables)


def finish(
    left: LeftOut, out_file: Path | None, explicit: Path | None, echo: Callable[[str], None]
) -> Path | None:
    """Writes the left-out file (beside `--out`, or `--left-out`) and says, one line per reason, who
    was left out; returns the file written (None: nothing to write it beside)."""
    from training.audience import left_out_path

    for line in left.summary_lines():
        echo(line)
    path = left_out_path(out_file, explicit)
    if path is not None:
        left.write(path)
        echo(f"left-out list: {path}")
    return path
