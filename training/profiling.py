"""Wall time and peak memory per pipeline stage, for progress reports and `bench/train_scale.py`."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


class StageTimer:
    """Records seconds and peak resident memory (this process and its children) of named stages.

    A sampling thread reads RSS every `interval` seconds, so short peaks between samples can be
    missed; the process-wide high-water mark is reported separately as `peak_rss_mb`.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.stages: dict[str, dict[str, float]] = {}
        self._process = psutil.Process()
        self._peak_total = 0.0

    def _rss_mb(self) -> float:
        total = 0
        for proc in [self._process, *self._process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    @contextmanager
    def stage(self, name: str):
        peak = [self._rss_mb()]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval):
                peak[0] = max(peak[0], self._rss_mb())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], self._rss_mb())
            self._peak_total = max(self._peak_total, peak[0])
            self.stages[name] = {
                "seconds": round(time.perf_counter() - started, 3),
                "peak_rss_mb": round(peak[0], 1),
            }

    @property
    def peak_rss_mb(self) -> float:
        return round(self._peak_total, 1)

    @property
    def total_seconds(self) -> float:
        return round(sum(s["seconds"] for s in self.stages.values()), 3)
