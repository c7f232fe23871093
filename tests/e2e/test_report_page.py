"""`omni report` on the session's trained store: the page opened in a real headless browser
(Debian's chromium, installed by `make test`), its charts drawn and no script error; both files
logged to the training run; and the page served at GET /report."""

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from training.cli import main

CHROMIUM = Path("/usr/bin/chromium")
# every chart the generated data support: revenue, cohorts, cross-channel, journeys, message
# conversion, send time, lift, segments and the models (no lifetime value without clv_365d)
MIN_CHARTS = 9


@pytest.fixture(scope="module")
def report_dir(trained, generated_data, tracking_uri, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(
        main, ["report", "--data", str(generated_data), "--out", str(out), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 0, result.output
    assert f"logged to run {trained.run_id}" in result.output
    return out


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make test` installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=1",
        # run the page's timers and load handlers to the end before dumping or shooting
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_report_writes_both_files_and_logs_them_to_the_training_run(
    report_dir, trained, tracking_uri, workdir
):
    from mlflow import MlflowClient

    markdown = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    assert markdown.startswith("# Marketing and model report")
    for section in (
        "## KPIs from the data",
        "## Measured lift against the control group",
        "## Models beside",
    ):
        assert section in markdown
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(trained.run_id, "report")}
    assert logged == {"report/report.md", "report/report.html"}
    # the copy the service serves
    assert (workdir / "report" / "report.html").read_text() == page


def test_the_page_renders_in_chromium_with_its_charts_and_no_script_error(report_dir, tmp_path):
    url = (report_dir / "report.html").resolve().as_uri()
    dumped = chromium(tmp_path, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    body = re.search(r'<body data-charts="(\d+)" data-charts-rendered="(\d+)"', dom)
    assert body, "the page's load handler did not run"
    charts, rendered = int(body.group(1)), int(body.group(2))
    assert charts >= MIN_CHARTS and rendered == charts
    sizes = re.findall(r'data-rendered="(yes|no)" data-width="(\d+)" data-height="(\d+)"', dom)
    assert len(sizes) == charts
    assert all(ok == "yes" and int(w) > 200 and int(h) > 100 for ok, w, h in sizes)
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    assert "charts could not be shown" not in dom.split("</main>")[0].split('id="chart-warning"')[1][:200]

    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.stat().st_size > 50_000, taken.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # text, tables and a chart, not a blank page


def test_the_service_serves_the_page_at_get_report(server, report_dir, workdir):
    url, _ = server
    answer = httpx.get(f"{url}/report", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text == (workdir / "report" / "report.html").read_text()
    assert httpx.post(f"{url}/report", timeout=30).status_code == 405  # read-only


def test_report_on_bad_input_exits_2_with_the_reason(tmp_path, tracking_uri):
    runner = CliRunner()
    missing = runner.invoke(
        main,
        [
            "report",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "r"),
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert missing.exit_code == 2 and "does not meet the data contract" in missing.output
    assert not (tmp_path / "r").exists()
    policy = tmp_path / "policy.toml"
    policy.write_text("[control_group]\nshare = 0.05\nsalt = 'x'\ncolour = 'blue'\n")
    typo = runner.invoke(main, ["report", "--policy", str(policy), "--out", str(tmp_path / "r")])
    assert typo.exit_code == 2 and f"--policy {policy}" in typo.output and "colour" in typo.output
