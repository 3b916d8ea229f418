"""The sample manifest: every training image as the plan decided it, in a sidecar file the plan hashes.

One entry per image, in training order: its path, the sha256 and size of its bytes, its displayed size,
its dataset, the caption text and where it came from, how many samples it gives each epoch (repeats
and regularization balance), its bucket and the crop that cuts the bucket from the resized image.

The plan keeps only the manifest's hash, counts and file name under `data.manifest`, so `plan.json`
stays small for 50k images. The compiler writes the manifest beside every plan file it writes and into
`<cache dir>/manifests/`; the runtime reads it, checks its hash against the plan, and derives nothing
that the manifest already says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from json.encoder import encode_basestring as _string
from pathlib import Path
from typing import Any

from sdxlc.plan.buckets import Bucket, Crop
from sdxlc.plan.files import write_atomic

MANIFEST_VERSION = 1
MANIFEST_DIR = "manifests"  # under the cache folder


class ManifestError(Exception):
    """A manifest that is missing, damaged, or not the one the plan names."""


@dataclass(frozen=True)
class ManifestImage:
    """One training image as the plan decided it."""

    path: str
    sha256: str
    size: int  # bytes
    width: int  # displayed size, EXIF orientation applied
    height: int
    dataset: int
    caption: str
    caption_source: str  # the caption file, "manifest", or "default" when the image has none
    count: int  # samples per epoch: repeats, regularization balanced to the training samples
    bucket: Bucket
    crop: Crop
    # companions (sdxlc/resolve/companions.py), written only when set: the mask file, "alpha" (the image's
    # own alpha channel) or ""; the control image or ""; the sha256 of each file's bytes
    mask: str = ""
    mask_sha256: str = ""
    control: str = ""
    control_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256, "size": self.size, "width": self.width,
            "height": self.height, "dataset": self.dataset, "caption": self.caption,
            "caption_source": self.caption_source, "count": self.count, "bucket": list(self.bucket),
            "crop": [self.crop.scaled_w, self.crop.scaled_h, self.crop.top, self.crop.left],
            **{key: value for key, value in self.companions().items() if value},
        }

    def companions(self) -> dict[str, str]:
        return {"mask": self.mask, "mask_sha256": self.mask_sha256, "control": self.control,
                "control_sha256": self.control_sha256}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ManifestImage:
        w, h = entry["bucket"]
        return cls(
            str(entry["path"]), str(entry["sha256"]), int(entry["size"]), int(entry["width"]),
            int(entry["height"]), int(entry["dataset"]), str(entry["caption"]), str(entry["caption_source"]),
            int(entry["count"]), (int(w), int(h)), Crop(*(int(v) for v in entry["crop"])),
            *(str(entry.get(key, "")) for key in ("mask", "mask_sha256", "control", "control_sha256")),
        )


@dataclass(frozen=True)
class Manifest:
    images: tuple[ManifestImage, ...]

    def text(self) -> str:
        """The canonical bytes of the sidecar file (what its sha256 is taken over): the JSON text of
        `{"images": [to_json()…], "version": 1}` with sorted keys, no spaces, plain UTF-8."""
        return self._text

    @cached_property
    def _text(self) -> str:  # written out key by key: json.dumps of 50k dicts takes a second
        return '{"images":[' + ",".join(map(_entry_text, self.images)) + f'],"version":{MANIFEST_VERSION}}}\n'

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.text().encode("utf-8")).hexdigest()

    @property
    def file_name(self) -> str:
        return f"manifest-{self.sha256[:16]}.json"

    def summary(self) -> dict[str, Any]:
        """What the plan records of its manifest (`data.manifest`)."""
        return {"file": self.file_name, "sha256": self.sha256, "images": len(self.images),
                "samples": sum(image.count for image in self.images)}

    def sample_order(self) -> Iterator[int]:
        """The epoch's samples as image indices: per dataset, round by round, each image while it has
        samples left (so repeats of one image are spread over the epoch in file order)."""
        for dataset in sorted({image.dataset for image in self.images}):
            members = [i for i, image in enumerate(self.images) if image.dataset == dataset]
            for round_ in range(max((self.images[i].count for i in members), default=0)):
                yield from (i for i in members if round_ < self.images[i].count)


def _entry_text(image: ManifestImage) -> str:
    """`json.dumps(image.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)`."""
    crop = image.crop  # every number below is an int (bool is never one of them)
    control = _optional(image, "control", "control_sha256")
    mask = _optional(image, "mask", "mask_sha256")
    return (f'{{"bucket":[{image.bucket[0]},{image.bucket[1]}],"caption":{_string(image.caption)},'
            f'"caption_source":{_string(image.caption_source)},{control}"count":{image.count},'
            f'"crop":[{crop.scaled_w},{crop.scaled_h},{crop.top},{crop.left}],'
            f'"dataset":{image.dataset},"height":{image.height},{mask}"path":{_string(image.path)},'
            f'"sha256":{_string(image.sha256)},"size":{image.size},"width":{image.width}}}')


def _optional(image: ManifestImage, *keys: str) -> str:
    """The set ones of the companion keys, each followed by a comma (their place in sorted key order)."""
    return "".join(f'"{key}":{_string(getattr(image, key))},' for key in keys if getattr(image, key))


def parse(text: str) -> Manifest:
    try:
        body = json.loads(text)
        if body.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"manifest version {body.get('version')!r}, not {MANIFEST_VERSION}")
        return Manifest(tuple(ManifestImage.from_json(entry) for entry in body["images"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"not a sample manifest ({type(exc).__name__}: {exc})") from exc


def candidates(summary: dict[str, Any], plan_file: Path | None, cache_dir: str | None) -> list[Path]:
    """Where a plan's manifest may be: beside the plan file, then in the cache folder's store."""
    places = [plan_file.parent / summary["file"]] if plan_file is not None else []
    if cache_dir:
        places.append(Path(cache_dir) / MANIFEST_DIR / summary["file"])
    return places


def load(summary: dict[str, Any], places: Sequence[Path]) -> Manifest:
    """The manifest the plan names, from the first place that holds it with the plan's hash."""
    seen: list[str] = []
    for place in places:
        try:
            raw = place.read_bytes()
        except OSError as exc:
            seen.append(f"{place}: {exc.strerror or type(exc).__name__}")
            continue
        if hashlib.sha256(raw).hexdigest() != summary["sha256"]:
            seen.append(f"{place}: its sha256 is not the one the plan records")
            continue
        return parse(raw.decode("utf-8"))
    where = "; ".join(seen) or "no place to look"
    raise ManifestError(f"the plan's sample manifest {summary['file']} was not found intact ({where}); "
                        "keep it beside the plan file, or re-plan with `sdxlc plan RECIPE -o plan.json`")


def write(manifest: Manifest, folder: Path) -> Path:
    """The manifest's sidecar file in `folder` (written atomically; an identical file is kept)."""
    path = folder / manifest.file_name
    data = manifest.text().encode("utf-8")
    if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
        write_atomic(path, data)
    return path


def store(manifest: Manifest, cache_dir: str) -> None:
    """Keep a copy in the cache folder's store, where a run finds it by the plan's hash; a cache folder
    that cannot be written is not an error (the copy beside the plan file is the one that travels)."""
    try:
        write(manifest, Path(cache_dir) / MANIFEST_DIR)
    except OSError:
        return


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
