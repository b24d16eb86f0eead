"""A progress line per stage of a long job, with an ETA from the stages already timed."""

from __future__ import annotations

import time
from contextlib import contextmanager


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class StageClock:
    """Counts planned stages by kind (``{"fit": 4, "evaluate": 9}``) and, before each one,
    logs ``[run 3/13, 2m10s, ETA ~6m40s] what``. The ETA prices each remaining stage at the
    mean of the finished stages of its kind (or of all kinds, before one of it has run), so it
    firms up as the job goes; stages restored from a previous run (under a second) are not
    priced."""

    RESTORED_S = 1.0

    def __init__(self, plan: dict[str, int], log=print, prefix: str = "run",
                 parallel: dict[str, int] | None = None) -> None:
        self.left = dict(plan)
        self.times: dict[str, list[float]] = {k: [] for k in plan}
        self.log, self.prefix, self.t0 = log, prefix, time.perf_counter()
        self.parallel = dict(parallel or {})  # kind → stages that run at once (executor workers)

    @property
    def total(self) -> int:
        return sum(self.left.values()) + sum(len(v) for v in self.times.values())

    def eta(self) -> float | None:
        # Stages under RESTORED_S were read back from a previous run: they say nothing about
        # what computing one costs, so they are left out of the prices.
        real = {k: [t for t in v if t >= self.RESTORED_S] for k, v in self.times.items()}
        done = [t for v in real.values() for t in v]
        if not done:
            return None
        overall = sum(done) / len(done)
        return sum(n * (sum(real[k]) / len(real[k]) if real.get(k) else overall)
                   / self.parallel.get(k, 1) for k, n in self.left.items())

    def skip(self, kind: str) -> None:
        """A planned stage that turned out not to be needed."""
        self.left[kind] = max(0, self.left[kind] - 1)

    def start(self, kind: str, what: str) -> tuple[str, float]:
        """Log the line of a stage that begins now; hand the token to :meth:`finish`."""
        n = sum(len(v) for v in self.times.values()) + 1
        eta = self.eta()
        tail = f", ETA ~{_clock(eta)}" if eta is not None else ""
        self.log(f"[{self.prefix} {n}/{self.total}, {_clock(time.perf_counter() - self.t0)}"
                 f"{tail}] {what}")
        return kind, time.perf_counter()

    def finish(self, token: tuple[str, float]) -> None:
        kind, t = token
        self.times.setdefault(kind, []).append(time.perf_counter() - t)
        self.left[kind] = max(0, self.left.get(kind, 1) - 1)

    @contextmanager
    def stage(self, kind: str, what: str):
        token = self.start(kind, what)
        yield
        self.finish(token)

    def map(self, executor, kind: str, model, fn, calls: list[tuple], shared,
            labels: list[str]) -> list:
        """``executor.map`` with a stage of ``kind`` per call: its line when a worker takes
        it, its time when the result is back (calls run at once on a parallel executor)."""
        tokens: dict[int, tuple[str, float]] = {}

        def started(i: int) -> None:
            tokens[i] = self.start(kind, labels[i])

        def done(i: int, _result) -> None:
            self.finish(tokens.pop(i))
        return executor.map(model, fn, calls, shared, labels=labels, on_result=done,
                            on_start=started)
