"""`bentoml build` works offline from bentofile.yaml (uv from the venv, no package locking)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bento_builds_offline(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(
        [str(bin_dir / "bentoml"), "build", "-f", "bentofile.yaml", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bentos = list((tmp_path / "bentoml" / "bentos" / "omni-nba").glob("*/bento.yaml"))
    assert bentos, "no bento was written"
    built = bentos[0].parent / "src"
    assert (built / "serving" / "service.py").exists()
    assert not (built / "tests").exists()
