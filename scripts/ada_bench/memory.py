"""Resident set size of this process, sampled in a background thread (Linux ``/proc``)."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from types import TracebackType

from typing_extensions import Self


def rss_mb() -> float:
    """Current resident set size in MiB (NaN where ``/proc/self/status`` is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class RssSampler:
    """Peak RSS while a block runs: ``with RssSampler() as m: ...; m.rise``.

    ``base`` is read after a garbage collection on entry; ``peak`` is the maximum sampled every
    ``interval`` seconds (and at exit); ``rise = peak - base``.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = self.peak = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        gc.collect()
        self.base = self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def rise(self) -> float:
        """Peak minus base, MiB."""
        return self.peak - self.base
