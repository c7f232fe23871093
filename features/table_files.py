"""Finding and reading the file of each table in a data folder, without interpreting it.

A table is `name.parquet`, `name.csv` or `name.csv.gz`; CSV is read as all-string columns so that
validation (`features.validation`) can report type problems per row.
"""

from __future__ import annotations

import csv
import gzip
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.contract import FILE_SUFFIXES
from features.problems import DataValidationError, Problem


def find_table_file(data_dir: str | Path, name: str) -> Path | None:
    """The file holding table `name` in `data_dir` (name.parquet, name.csv or name.csv.gz), or None.

    Raises DataValidationError when more than one of them exists: which one is meant is a guess.
    """
    folder = Path(data_dir)
    found = [folder / f"{name}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{name}{suffix}").is_file()]
    if len(found) > 1:
        files = ", ".join(path.name for path in found)
        raise DataValidationError(
            [Problem(name, None, None, f"two files for the same table: {files}; keep exactly one")]
        )
    return found[0] if found else None


def read_raw_table(path: str | Path) -> pd.DataFrame:
    """Reads one table file without interpreting it.

    CSV: every column as strings (empty cells and the usual NA markers are missing), so ids such
    as "00123" keep their zeros and type problems can be reported per row; duplicate header names
    are kept as duplicates so validation can report them. Parquet: read as stored.
    """
    path = Path(path)
    if path.name.endswith(".parquet"):
        frame = pq.ParquetFile(path).read().to_pandas()
        if not isinstance(frame.index, pd.RangeIndex):
            # a frame written with an index: a named index (e.g. customer_id) is data, keep it
            frame = frame.reset_index(drop=all(level is None for level in frame.index.names))
        return frame
    if path.name.endswith(".csv") or path.name.endswith(".csv.gz"):
        header = _csv_header(path)
        if header is None:
            raise ValueError("the file is empty (not even a header line)")
        try:  # the pyarrow parser is several times faster on large files
            frame = pd.read_csv(path, dtype=str, keep_default_na=True, engine="pyarrow")
        except Exception:  # then let the C parser try, its errors name the line
            with warnings.catch_warnings():
                # rows longer than the header: pandas would silently take the first cells as an
                # index (shifting every column) or drop the extra cells; both are errors here
                warnings.simplefilter("error", pd.errors.ParserWarning)
                try:
                    frame = pd.read_csv(
                        path, dtype=str, keep_default_na=True, low_memory=False, index_col=False
                    )
                except pd.errors.ParserWarning:
                    raise ValueError(
                        f"rows have more cells than the header has columns ({len(header)})"
                    ) from None
        if len(set(header)) < len(header) and len(header) == len(frame.columns):
            frame.columns = header  # undo pandas' "x.1" renaming of a repeated "x"
        return frame
    raise ValueError(f"{path.name}: unknown table file type (expected one of {', '.join(FILE_SUFFIXES)})")


def _csv_header(path: Path) -> list[str] | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), None)
