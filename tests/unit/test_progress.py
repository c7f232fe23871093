"""training.progress: the stage bar every long `omni` command draws ends at n/n, and is drawn only
on a terminal unless --quiet."""

import io

import pytest

from training.progress import StageBar, progress_wanted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _last_frame(text: str) -> str:
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_bar_is_drawn_on_a_terminal_unless_quiet():
    assert progress_wanted(False, Terminal())
    assert not progress_wanted(True, Terminal())
    assert not progress_wanted(False, io.StringIO())  # a log file or CI output: no carriage returns


def test_a_run_that_ends_well_ends_at_n_of_n_even_when_it_skips_a_stage():
    screen = Terminal()
    with StageBar("decide", ("load", "refresh", "decide", "write"), file=screen, tick_seconds=0) as bar:
        for name in ("load", "decide", "write"):  # no --data: nothing to refresh
            with bar.stage(name):
                pass
        assert bar.n == 3
    assert bar.n == bar.total == 4
    assert bar.done == ["load", "decide", "write"]
    assert "4/4" in _last_frame(screen.getvalue())


def test_a_run_that_fails_stays_where_it_failed():
    screen = Terminal()
    with (
        pytest.raises(SystemExit),
        StageBar("train", ("validate", "features", "register"), file=screen) as bar,
    ):
        with bar.stage("validate"):
            pass
        with bar.stage("features"):
            raise SystemExit(2)
    assert bar.n == 1
    assert "1/3" in _last_frame(screen.getvalue())


def test_a_disabled_bar_draws_nothing_and_still_counts():
    screen = Terminal()
    with StageBar("validate", ("read",), enabled=False, file=screen) as bar, bar.stage("read"):
        pass
    assert screen.getvalue() == "" and bar.n == 1


def test_an_unknown_stage_is_a_bug_said_at_once():
    with StageBar("x", ("a",), enabled=False) as bar, pytest.raises(ValueError, match="unknown stage 'b'"):
        with bar.stage("b"):
            pass
    with pytest.raises(ValueError, match="at least one stage"):
        StageBar("x", ())


def test_a_long_stage_ticks_its_elapsed_time():
    import time

    screen = Terminal()
    with StageBar("build", ("bento",), file=screen, tick_seconds=0.05) as bar, bar.stage("bento"):
        drawn = screen.getvalue().count("\r")
        time.sleep(0.3)
        assert screen.getvalue().count("\r") > drawn  # redrawn while nothing else moved it
