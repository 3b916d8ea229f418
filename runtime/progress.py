"""Progress reporting: a live bar on a terminal, plain log lines everywhere else."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any

WINDOW = 20  # steps in the moving loss average


def rss_mib() -> float:
    """Resident memory of this process in MiB."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).memory_info().rss) / 2**20
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """Reports each optimizer step: a tqdm bar when stdout is a TTY, else a line every `every` steps."""

    def __init__(self, total: int, every: int, enabled: bool = True, show_rss: bool = False) -> None:
        self.total, self.every, self.enabled, self.show_rss = total, every, enabled, show_rss
        self.window: deque[float] = deque(maxlen=WINDOW)
        self.started = time.perf_counter()
        self.bar: Any = None
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    @property
    def interactive(self) -> bool:
        return self.bar is not None

    def step(self, step: int, loss: float, lr: float) -> None:
        self.window.append(loss)
        if not self.enabled:
            return
        fields = self._fields(step, lr)
        if self.bar is not None:
            self.bar.set_postfix_str("  ".join(fields[1:]), refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            print("  ".join(fields), flush=True)

    def _fields(self, step: int, lr: float) -> list[str]:
        rate = step / max(time.perf_counter() - self.started, 1e-9)
        fields = [f"step {step}/{self.total}", f"loss {sum(self.window) / len(self.window):.4f}",
                  f"lr {lr:.2e}", f"{rate:.2f} it/s"]
        if self.show_rss:
            fields.append(f"rss {rss_mib():.0f} MiB")
        return fields

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
