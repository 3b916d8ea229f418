"""The sample manifest of a plan whose images, counts and buckets are exactly those of an earlier plan:
its canonical text read back from the cache folder's manifest store instead of being written out again.

Writing the text of 50k entries (and making the entries) is a good part of a warm plan. The text is a
pure function of the images (each `ImageItem`), their samples per epoch and the bucket and crop of each
image size, so their sha256 (`manifest_key`) names it: `<cache dir>/scans/manifest-<key>.txt` holds the
key itself (a file copied from another key's is not trusted) and the sha256 of the manifest made from
them, and the store (`<cache dir>/manifests/`) holds that manifest's text. A plan that finds both, with
the text's sha256 the recorded one, uses the text; the entries are made only when something asks for
them. Anything missing, damaged or different: the manifest is made as
before. The key file is written atomically; a cache folder that cannot be written is not an error.
"""

from __future__ import annotations

import hashlib
import marshal
import re
import sys
from collections.abc import Callable
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import Any

from sdxlc import __version__
from sdxlc.plan import buckets as bk
from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import MANIFEST_DIR, MANIFEST_VERSION, Manifest, ManifestImage
from sdxlc.resolve.datasets import ImageItem
from sdxlc.resolve.snapshot import SNAPSHOT_DIR

REUSE_VERSION = 2
_RECORD = re.compile(r"([0-9a-f]{64}) ([0-9a-f]{64})")  # the key, the manifest's sha256

Placed = dict[tuple[int, int], tuple[bk.Bucket, bk.Crop]]  # image size -> its bucket and crop


def manifest_key(items: list[ImageItem], counts: list[int], placed: Placed) -> str:
    """The sha256 of everything the manifest's text is made from."""
    described: tuple[Any, ...] = (
        REUSE_VERSION, MANIFEST_VERSION, __version__, sys.version, ImageItem._fields,
        [field.name for field in fields(ManifestImage)],
        [tuple(item) for item in items], list(counts),
        sorted((shape, bucket, (crop.scaled_w, crop.scaled_h, crop.top, crop.left))
               for shape, (bucket, crop) in placed.items()),
    )
    return hashlib.sha256(marshal.dumps(described)).hexdigest()


def reuse(
    key: str, cache_dir: str | None, images: int, samples: int, make: Callable[[], Manifest]
) -> Manifest | None:
    """The manifest `key` names, from the store, when it is there intact; None otherwise. `make` makes
    its entries, should anything ask for them."""
    if cache_dir is None:
        return None
    try:
        recorded = (Path(cache_dir) / SNAPSHOT_DIR / f"manifest-{key[:32]}.txt").read_text("ascii")
        record = _RECORD.fullmatch(recorded.strip())
        if record is None or record[1] != key:
            return None
        sha256 = record[2]
        raw = (Path(cache_dir) / MANIFEST_DIR / f"manifest-{sha256[:16]}.json").read_bytes()
    except (OSError, UnicodeDecodeError):
        return None
    if hashlib.sha256(raw).hexdigest() != sha256:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return KnownManifest.of(text, sha256, images, samples, make)


def remember(key: str, cache_dir: str | None, manifest: Manifest) -> None:
    """Note that `key` makes `manifest` (the pipeline keeps its text in the store)."""
    if cache_dir is None:
        return
    file = Path(cache_dir) / SNAPSHOT_DIR / f"manifest-{key[:32]}.txt"
    try:
        line = f"{key} {manifest.sha256}"
        if file.is_file() and file.read_text("ascii").strip() == line:
            return
        write_atomic(file, line.encode("ascii") + b"\n")
    except (OSError, UnicodeDecodeError):
        return


class KnownManifest(Manifest):
    """A manifest whose canonical text and sha256 are known; its entries are made when asked for."""

    _make: Callable[[], Manifest]
    _counts: tuple[int, int]  # images, samples

    @classmethod
    def of(
        cls, text: str, sha256: str, images: int, samples: int, make: Callable[[], Manifest]
    ) -> KnownManifest:
        known = object.__new__(cls)
        known.__dict__.update(_text=text, sha256=sha256, _make=make, _counts=(images, samples))
        return known

    @cached_property
    def images(self) -> tuple[ManifestImage, ...]:
        return self._make().images

    def summary(self) -> dict[str, Any]:
        images, samples = self._counts
        return {"file": self.file_name, "sha256": self.sha256, "images": images, "samples": samples}
