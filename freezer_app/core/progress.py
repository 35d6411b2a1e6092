"""How far a run is and how long it has left, from its events: epoch k of n, the step within
the epoch, images/s, elapsed time and an ETA. The window's status bar and progress bar and the
command line's progress bar read the same numbers.

The ETA divides the steps left by the recent step rate, measured over the last minute or so of
training (a moving window, not the whole run: the first steps include start-up and compilation,
and a plan change makes steps faster or slower). Validation time is part of that rate, as it is
part of the wait. Elapsed is wall-clock time since the run (or its resume) started; paused time does
not count in the rate, and the ETA stands still while paused.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

RATE_WINDOW_S = 60.0  # seconds of recent steps the rate is measured over
MIN_RATE_STEPS = 3  # fewer measured steps than this: no ETA yet


def duration(seconds: float) -> str:
    """'42 s', '3:07', '1:02:09' (hours, minutes, seconds)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands; the numbers every progress display shows."""

    step: int
    total_steps: int
    epoch: int  # 1-based, the epoch the step belongs to
    epochs: int
    step_in_epoch: int  # 1-based
    steps_per_epoch: int
    images_per_s: float
    elapsed_s: float
    eta_s: float | None  # None until there are enough steps to measure a rate
    paused: bool = False

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def text(self, speed: bool = True) -> str:
        """'epoch 2/5 · step 13/40 · 850 images/s · 0:42 elapsed · about 1:10 left'
        (speed=False leaves out the images/s, for a display that shows it apart)."""
        parts = []
        if self.steps_per_epoch:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
            parts.append(f"step {self.step_in_epoch}/{self.steps_per_epoch}")
        else:
            parts.append(f"step {self.step}")
        if speed and self.images_per_s:
            parts.append(f"{self.images_per_s:,.0f} images/s")
        parts.append(f"{duration(self.elapsed_s)} elapsed")
        if self.eta_s is not None:
            parts.append(f"about {duration(self.eta_s)} left")
        return " · ".join(parts)


class RunProgress:
    """Fed with the run's RunStarted, step and pause events, in order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.epochs = 0
        self.step = 0
        self.images_per_s = 0.0
        self._started = 0.0
        self._paused_at: float | None = None
        self._paused_s = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (active time, step)

    def start(
        self, total_steps: int, steps_per_epoch: int, epochs: int, start_step: int = 0
    ) -> None:
        self.total_steps, self.steps_per_epoch, self.epochs = total_steps, steps_per_epoch, epochs
        self.step, self.images_per_s = start_step, 0.0
        self._started, self._paused_at, self._paused_s = self._clock(), None, 0.0
        self._recent.clear()

    def _active(self, now: float) -> float:
        """Seconds since the start, less the time spent paused."""
        paused = self._paused_s + (now - self._paused_at if self._paused_at is not None else 0.0)
        return now - self._started - paused

    def on_step(self, step: int, images_per_s: float) -> None:
        if self._paused_at is not None:  # a step reported after a pause: it is running again
            self.set_paused(False)
        now = self._active(self._clock())
        self.step, self.images_per_s = step, images_per_s
        self._recent.append((now, step))
        while len(self._recent) > MIN_RATE_STEPS and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()

    def set_paused(self, paused: bool) -> None:
        now = self._clock()
        if paused and self._paused_at is None:
            self._paused_at = now
        elif not paused and self._paused_at is not None:
            self._paused_s += now - self._paused_at
            self._paused_at = None

    def eta_s(self) -> float | None:
        if len(self._recent) < MIN_RATE_STEPS or not self.total_steps:
            return None
        (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        left = max(0, self.total_steps - self.step)
        # Time since the last step counts too, so the estimate does not freeze between steps.
        since_last = max(0.0, self._active(self._clock()) - t1)
        return max(0.0, left * (t1 - t0) / (s1 - s0) - since_last)

    def snapshot(self) -> Snapshot:
        per = self.steps_per_epoch
        epoch = (self.step - 1) // per + 1 if per and self.step else (1 if per else 0)
        in_epoch = (self.step - 1) % per + 1 if per and self.step else 0
        return Snapshot(
            step=self.step,
            total_steps=self.total_steps,
            epoch=min(epoch, self.epochs) if self.epochs else epoch,
            epochs=self.epochs,
            step_in_epoch=in_epoch,
            steps_per_epoch=per,
            images_per_s=self.images_per_s,
            elapsed_s=self._clock() - self._started if self._started else 0.0,
            eta_s=self.eta_s(),
            paused=self._paused_at is not None,
        )
