"""Event-loop lag: how late the server's loop wakes a task that sleeps a fixed interval.

Everything on the loop (signaling, RTP forwarding, the recorder's sinks,
identity scheduling) shares one thread; a callback that blocks it delays all
of them. :class:`LoopLagMonitor` runs one task that sleeps ``interval_s``
(50 ms) and records how much later than asked it woke. It keeps the samples of
the last ``window_s`` seconds (a bounded deque) and the largest lag since it
started, and summarises them for ``GET /healthz``::

    {"p50": 0.4, "p99": 1.9, "max": 3.1, "samples": 1200, "window_s": 60.0, "max_since_start": 12.5}

Lags are in milliseconds. A lag under ~1 ms is the timer's own slack; a p99
of tens of milliseconds means something runs on the loop that should not
(face work runs in worker processes so that the p99 stays under 20 ms).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

#: seconds between wake-ups
DEFAULT_INTERVAL_S = 0.05
#: seconds of samples kept for the percentiles
DEFAULT_WINDOW_S = 60.0


class LoopLagMonitor:
    """A task on the running loop measuring its wake-up lag; ``start()``, then ``aclose()``."""

    def __init__(
        self, interval_s: float = DEFAULT_INTERVAL_S, window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if interval_s <= 0 or window_s < interval_s:
            raise ValueError("need 0 < interval_s <= window_s")
        self.interval_s = interval_s
        self.window_s = window_s
        #: (loop time of the wake-up, lag in seconds), oldest first
        self._samples: deque[tuple[float, float]] = deque(maxlen=math.ceil(window_s / interval_s))
        self.max_since_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="loop-lag-monitor"
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - due)
            self._samples.append((now, lag))
            if lag > self.max_since_start:
                self.max_since_start = lag

    def summary(self, last_s: float | None = None) -> dict[str, float | int]:
        """p50/p99/max (ms) over the kept samples, or over those of the last ``last_s`` seconds."""
        samples = self._samples
        if last_s is not None and samples:
            since = samples[-1][0] - last_s
            lags = sorted(lag for t, lag in samples if t > since)
        else:
            lags = sorted(lag for _, lag in samples)
        window = self.window_s if last_s is None else min(self.window_s, last_s)
        return {
            "p50": _ms(_percentile(lags, 0.50)),
            "p99": _ms(_percentile(lags, 0.99)),
            "max": _ms(lags[-1] if lags else 0.0),
            "samples": len(lags),
            "window_s": window,
            "max_since_start": _ms(self.max_since_start),
        }

    async def aclose(self) -> None:
        """Stop measuring. Safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # gather: our own task's cancellation is swallowed, the caller's is not
        await asyncio.gather(task, return_exceptions=True)


#: the running server's monitor (started and stopped with the app's resources)


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)
