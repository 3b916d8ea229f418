"""`training.compile`: the UNet's training step compiled with torch.compile (TorchInductor).

Compiling traces the UNet's forward and backward once per input shape and generates fused kernels
(C++ on the CPU, Triton on CUDA), so a step no longer pays Python's dispatch of a few thousand small
operations. It pays after the first steps: the first step of each shape compiles, which takes minutes on
a small CPU and is cached on disk for the next run (TorchInductor's cache, keyed by the graph). The plan
knows every shape the UNet will see, one per bucket and batch size (a bucket's last batch may be
smaller: docs/DATA.md), and writes how many there are, so the run allows that many compiles and never
falls back to eager mode in the middle of a run. Off by default: the word `compile` turns it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdxlc.resolve.launch import Builder

BACKEND = "inductor"
MODE = "default"

def batch_shapes(bucket_sizes: Sequence[int], batch_size: int) -> int:
    """How many distinct batch shapes a run's buckets give: a full batch where a bucket holds at least
    `batch_size` samples, and its smaller last batch where the samples do not divide evenly."""
    shapes = 0
    for samples in bucket_sizes:
        if samples <= 0:
            continue
        shapes += (samples >= batch_size) + (samples % batch_size > 0)
    return max(1, shapes)


def resolve_compile(b: Builder, bucket_sizes: Sequence[int], batch_size: int) -> dict[str, Any] | None:
    """The plan's `training.compile`: null, or what the runtime passes to torch.compile and how many
    shapes it compiles."""
    if not b.take("training.compile", "training.compile"):
        return None
    b.provenance["training.compile.shapes"] = {"source": "derived", "at": "from the bucket table"}
    return {"backend": BACKEND, "mode": MODE, "shapes": batch_shapes(bucket_sizes, batch_size)}
