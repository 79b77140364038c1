"""Peak RSS, CPU and wall seconds of this process and all its children, sampled in a thread.

The one meter of every benchmark script: the children are the Dask nannies and workers (and
any subprocess), so a LocalCluster run is measured whole, not just its client.
"""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """Sample the summed RSS of this process and its children every ``interval`` seconds.

    After the block: ``peak`` (bytes), ``start`` (bytes at entry), ``seconds`` (wall) and
    ``cpu`` (user + system seconds over the tree within the block: each child's last sampled value
    less its value at entry, so workers started earlier do not count their start-up), because on a
    shared machine wall time says little on its own.

    Examples
    --------
    >>> with PeakRSS(interval=0.01) as rss:
    ...     block = bytearray(50 * 2**20)
    >>> rss.peak >= rss.start > 0 and rss.seconds > 0
    True
    """

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self.start, self.cpu, self.seconds = interval, 0, 0, 0.0, 0.0
        self._stop = threading.Event()
        self._children: dict[int, float] = {}
        self._children_at_entry: dict[int, float] = {}

    @staticmethod
    def _own_cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def sample(self) -> int:
        """Add up the tree's RSS now (and note each child's CPU time); update ``peak``."""
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                if p.pid != me.pid:
                    self._children[p.pid] = self._own_cpu(p)
            except psutil.Error:  # a process that just ended
                pass
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self._cpu0 = self._own_cpu(psutil.Process())
        self.start = self.sample()
        self._children_at_entry = dict(self._children)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.sample()
        self.cpu = self._own_cpu(psutil.Process()) - self._cpu0 + sum(
            cpu - self._children_at_entry.get(pid, 0.0) for pid, cpu in self._children.items())
