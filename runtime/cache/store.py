"""Content-addressed caches on disk: VAE latents and text-encoder outputs as safetensors files.

A latent's key hashes the image bytes, the bucket, the crop, the flip, the VAE's identity (its config
and a fingerprint of its weights) and the VAE dtype; a text entry's key hashes the processed caption
and the identities of both tokenizers and both encoders. A changed input changes the key, so a stale
entry is never read; identical inputs share entries, across recipes too. Identities are canonical:
a config is hashed without diffusers' bookkeeping fields (`_use_default_values`, `_diffusers_version`,
`_name_or_path`…), whose contents and order change between processes, so entries hit across processes.
Entries are written atomically (sdxlc/plan/files.py), so a crash never leaves half an entry, and checked
on every read: a truncated file, a damaged header, a missing tensor, a non-finite value or another key's
entry (each entry records its key in its header) is reported and the entry is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from runtime import saving
from runtime.formats.safetensors_file import write as write_safetensors
from sdxlc.plan import buckets as bk
from sdxlc.plan.files import atomic_path, temp_target

KEY_VERSION = 2  # 2: configs hashed without diffusers' bookkeeping fields
# the tensors of each kind, with their number of dimensions
EXPECTED = {"latents": {"parameters": 3}, "text": {"states": 2, "pooled": 1}}
# tensors an entry may hold besides the expected ones: a masked image's latent entry holds its mask
# (1, H, W) in the image's crop (docs/DATA.md "Masked loss"), and its key names the mask
OPTIONAL = {"latents": {"mask": 3}}


@dataclass
class Counts:
    """How many entries a cache encoded and how many it reused (from disk)."""

    encoded: int = 0
    reused: int = 0

    def __str__(self) -> str:
        return f"{self.encoded} encoded, {self.reused} reused"


def fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """sha256 of a module's config and every tensor of its state (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    if config is not None:
        digest.update(json.dumps(_plain(config), sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    digest.update(f"{tokenizer.__class__.__name__}:{tokenizer.model_max_length}".encode())
    return digest.hexdigest()


def latent_key(image_hash: str, bucket: bk.Bucket, crop: bk.Crop, flip: bool, vae: str, dtype: str,
               mask: str = "") -> str:
    """`mask`: what the image's mask is made from (its file's sha256, or `alpha`); "" for none, which
    leaves the key of an unmasked image as it was."""
    return _key({
        "kind": "latent", "image": image_hash, "bucket": list(bucket),
        "crop": [crop.scaled_w, crop.scaled_h, crop.top, crop.left], "flip": flip, "vae": vae, "dtype": dtype,
        **({"mask": mask} if mask else {}),
    })


def text_key(caption: str, tokenizers: str, encoders: str) -> str:
    return _key({"kind": "text", "caption": caption, "tokenizers": tokenizers, "encoders": encoders})


def _key(fields: dict[str, Any]) -> str:
    text = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(config: Any) -> Any:
    """The config fields that change the module's output, in a canonical form (no `_`-prefixed fields)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if hasattr(config, "items"):
        return {str(k): _plain(v) for k, v in sorted(config.items(), key=lambda kv: str(kv[0]))
                if not str(k).startswith("_")}
    if isinstance(config, (list, tuple)):
        return [_plain(v) for v in config]
    return config


class DiskCache:
    """Entries under `<dir>/<kind>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.warnings: list[str] = []  # damaged entries found on read

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str, shapes: dict[str, tuple[int, ...]] | None = None,
             ) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, checked (against `shapes` too when given); None when it is absent, or
        damaged (then `warnings` names it, and the caller encodes it again and stores it over it)."""
        file = self.path(kind, key)
        try:
            if not file.is_file():
                return None
        except OSError as exc:  # a folder on the way that cannot be searched (no permission)
            self.warnings.append(f"cache entry {file} cannot be read ({exc.strerror or exc}): encoded again")
            return None
        problem = None
        try:
            with safe_open(str(file), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("key")
                tensors: dict[str, torch.Tensor] = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on damage
            problem = f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
        else:
            # an entry names its own key (entries written before keys were recorded name none): another
            # entry's file moved or copied here is caught, at no cost (the header is read anyway)
            if stored is not None and stored != key:
                problem = f"it is the entry of key {stored[:12]}…, moved or copied here"
            else:
                problem = entry_problem(kind, tensors, shapes)
        if problem is None:
            return tensors
        self.warnings.append(f"cache entry {file} is damaged ({problem}): encoded again")
        return None

    def store(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        file = self.path(kind, key)
        with saving(file, "the cache entries written before are intact"), atomic_path(file) as temp:
            write_safetensors(temp, {k: v.detach() for k, v in tensors.items()}, {"key": key})

    def entries(self) -> list[Path]:
        return sorted(p for kind in EXPECTED for p in (self.root / kind).glob("*/*.safetensors"))


def entry_problem(kind: str, tensors: dict[str, torch.Tensor],
                  shapes: dict[str, tuple[int, ...]] | None = None) -> str | None:
    """What is wrong with an entry's tensors: a missing or extra tensor, a wrong shape (exactly `shapes`
    when given, else the right number of dimensions), a non-float or non-finite value."""
    expected = {**EXPECTED.get(kind, {}), **{k: v for k, v in OPTIONAL.get(kind, {}).items() if k in tensors}}
    wanted = set(EXPECTED.get(kind, {})) | set(shapes or {})
    if set(tensors) != set(expected) or not wanted <= set(tensors):
        return f"holds {sorted(tensors)}, expected {sorted(wanted)}"
    for name, tensor in tensors.items():
        want = shapes.get(name) if shapes else None
        shape = tuple(tensor.shape)
        wrong = (want is not None and shape != want) or len(shape) != expected[name]
        if not tensor.is_floating_point() or wrong:
            return f"`{name}` is {tensor.dtype} of shape {shape}" + (f", expected {want}" if want else "")
        if not bool(torch.isfinite(tensor).all()):
            return f"`{name}` holds NaN or infinite values"
    return None


def verify(root: str | Path) -> tuple[int, list[str]]:
    """Check every entry under `root`; damaged ones are removed (they are encoded again when needed).
    Returns how many entries were checked and what was wrong with the damaged ones."""
    cache = DiskCache(root)
    entries = cache.entries()
    for file in entries:
        if file.parent.name != file.stem[:2] or not file.is_file() or file.is_symlink():
            cache.warnings.append(f"{file} is not a cache entry (misplaced, a folder or a link)")
            _remove(file)
        elif cache.load(file.parent.parent.name, file.stem) is None:
            _remove(file)
    damaged = [warning.removesuffix(": encoded again") + ": removed" for warning in cache.warnings]
    return len(entries), damaged


def _remove(path: Path) -> None:
    with saving(path, "the cache is unchanged past this entry"):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def prune(root: str | Path, used: set[str]) -> tuple[int, int]:
    """Remove the entries whose key is not in `used`; (kept, removed)."""
    kept = removed = 0
    for file in DiskCache(root).entries():
        if file.stem in used and file.is_file():
            kept += 1
        else:
            _remove(file)
            removed += 1
    return kept, removed


STALE_TEMP_SECONDS = 600.0  # a write in progress renames its temporary file within seconds
_ENTRY_NAME = re.compile(r"([0-9a-f]{64})\.safetensors")  # an entry's file, in its key's folder


def stale_temps(root: str | Path, now: float | None = None) -> list[Path]:
    """Temporary files that interrupted writes (a kill, a full disk) left beside the entries
    (`.<entry>.<random>.tmp`, sdxlc/plan/files.py), untouched for STALE_TEMP_SECONDS: a younger one may be
    an entry another run is writing right now. Only files named as an entry's write in its key's folder:
    never another `.tmp` file, a link or a folder."""
    now = time.time() if now is None else now
    found = []
    for kind in EXPECTED:
        for path in (Path(root) / kind).glob("*/.*.tmp"):
            named = _ENTRY_NAME.fullmatch(temp_target(path.name) or "")
            if named is None or named[1][:2] != path.parent.name:
                continue
            try:
                info = path.lstat()
            except OSError:  # gone meanwhile: another process finished or removed it
                continue
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMP_SECONDS:
                found.append(path)
    return sorted(found)


def remove_stale_temps(root: str | Path) -> tuple[int, list[str]]:
    """Remove `stale_temps(root)`: how many were removed, and a line for each one that could not be (a
    cache folder this user cannot write, a shared one: the file stays, and the entries are still checked)."""
    removed, failed = 0, []
    for path in stale_temps(root):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append(f"{path} could not be removed: {exc.strerror or exc}")
        else:
            removed += 1
    return removed, failed
