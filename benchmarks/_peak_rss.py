"""Peak RSS (and CPU seconds) of this process and all its children, sampled in a thread."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Sample the summed RSS of this process and its children every ``interval`` seconds.

    Also adds up CPU seconds over the tree (children's last sampled value), because on a shared
    machine wall time says little on its own.
    """

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self.cpu, self._stop = interval, 0, 0.0, threading.Event()
        self._children: dict[int, float] = {}

    @staticmethod
    def _own_cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    if p.pid != me.pid:
                        self._children[p.pid] = self._own_cpu(p)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._cpu0 = self._own_cpu(psutil.Process())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.cpu = self._own_cpu(psutil.Process()) - self._cpu0 + sum(self._children.values())
