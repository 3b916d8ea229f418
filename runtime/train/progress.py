"""Progress reporting: a live bar on a terminal, plain log lines everywhere else.

Both forms show the step, the moving-average loss, the learning rate, the speed, the time left and the
memory in use: peak allocated VRAM on CUDA, the process's resident memory (RSS) otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

WINDOW = 20  # steps in the moving loss average


def rss_mib() -> float:
    """Resident memory of this process in MiB (peak RSS where psutil is missing)."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).memory_info().rss) / 2**20
    except ImportError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def memory_text(device: str) -> str:
    """`vram 5.2 GiB` (peak allocated on CUDA) or `rss 812 MiB`."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return f"vram {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    return f"rss {rss_mib():.0f} MiB"


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """Reports each optimizer step: a tqdm bar when stdout is a TTY, else a line every `every` steps."""

    def __init__(self, total: int, every: int, enabled: bool = True, device: str = "cpu",
                 tty: bool | None = None, history: Sequence[float] = ()) -> None:
        self.total, self.every, self.enabled, self.device = total, every, enabled, device
        # a resumed run starts from the losses its checkpoint kept, so the average goes on, not over
        self.window: deque[float] = deque(history, maxlen=WINDOW)
        self.started = time.perf_counter()
        self.first: tuple[int, float] | None = None  # (step, time) of the first step: speed leaves setup out
        self.bar: Any = None
        self.validation: dict[str, float] = {}  # the last validation losses, shown from then on
        if enabled and (sys.stdout.isatty() if tty is None else tty):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    @property
    def interactive(self) -> bool:
        return self.bar is not None

    @property
    def average(self) -> float:
        """The moving average of the last WINDOW step losses."""
        return sum(self.window) / len(self.window) if self.window else float("nan")

    def advance(self, step: int) -> None:
        """Optimizer step `step` is done (its loss may be read later): the speed's clock and the bar."""
        if self.first is None:
            self.first = (step, time.perf_counter())
        if self.enabled and self.bar is not None:
            self.bar.update(step - self.bar.n)

    def step(self, step: int, loss: float, lr: float) -> None:
        """The loss of step `step`, read at one of the run's read points (runtime/train/readout.py)."""
        self.window.append(loss)
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        if not self.enabled:
            return
        fields = self.fields(step, lr, now)
        if self.bar is not None:
            self.bar.set_postfix_str("  ".join(fields[1:]), refresh=False)
            self.bar.update(step - self.bar.n)
        elif step % self.every == 0 or step == self.total:
            print("  ".join(fields), flush=True)

    def rate(self, step: int, now: float) -> float:
        """Steps per second since the first step (over the whole run while there is only one)."""
        if self.first is not None and step > self.first[0]:
            return (step - self.first[0]) / max(now - self.first[1], 1e-9)
        return step / max(now - self.started, 1e-9)

    def fields(self, step: int, lr: float, now: float | None = None) -> list[str]:
        now = time.perf_counter() if now is None else now
        rate = self.rate(step, now)
        left = (self.total - step) / rate if rate > 0 else float("inf")
        shown = [f"{name} {value:.4f}" for name, value in self.validation.items()]
        return [f"step {step}/{self.total}", f"loss {self.average:.4f}", *shown, f"lr {lr:.2e}",
                f"{rate:.2f} it/s", memory_text(self.device), f"eta {duration(left)}"]

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
