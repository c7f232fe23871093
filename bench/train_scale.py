"""Wall time and peak memory of `omni train`, stage by stage, on generated data of N customers.

    python bench/train_scale.py --customers 100000 --out work/bench/train_scale_100k.json

Generates the data (timed as the `generate` stage) into a scratch folder under the working folder,
then runs the same pipeline as `omni train` against a fresh SQLite MLflow store. Prints JSON:
{"customers": n, "events": n, "stages": {"generate": {"seconds": x, "peak_rss_mb": x}, ...},
 "total_seconds": x, "peak_rss_mb": x}. Peak RSS is sampled every 0.2 s over this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--data", type=Path, default=None, help="Use this generated folder instead of generating."
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench-scale")
    parser.add_argument("--keep", action="store_true", help="Keep the generated data and store.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve() / f"c{args.customers}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["OMNI_WORKDIR"] = str(workdir)

    from features.synthetic import generate
    from training.config import TrainConfig
    from training.profiling import StageTimer
    from training.train import run_training

    timer = StageTimer()
    data_dir = args.data
    if data_dir is None:
        data_dir = workdir / "data"
        with timer.stage("generate"):
            generate(args.customers, args.seed, data_dir, show_progress=True)
    result = run_training(
        data_dir, f"sqlite:///{workdir / 'mlflow.db'}", TrainConfig(), show_progress=True, timer=timer
    )
    import pyarrow.parquet as pq

    events = pq.ParquetFile(Path(data_dir) / "events.parquet").metadata.num_rows
    out = {
        "customers": args.customers,
        "events": int(events),
        "stages": timer.stages,
        "total_seconds": timer.total_seconds,
        "peak_rss_mb": timer.peak_rss_mb,
        "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, 24 GB, no GPU",
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
