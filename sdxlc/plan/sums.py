"""Integrity manifests of what a run writes, in the format of `sha256sum` (so `sha256sum -c` reads them).

A checkpoint folder ends with `SHA256SUMS`, one line per file (`<sha256>  <name>`), written last and
atomically: a folder without it, or whose files do not match it, is not trusted. A saved artifact
(`x.safetensors`) gets `x.safetensors.sha256` beside it, written after the artifact itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sdxlc.plan.files import write_atomic
from sdxlc.plan.manifest import file_sha256

SUMS = "SHA256SUMS"
SIDECAR = ".sha256"


def sums_text(folder: Path, names: Iterable[str]) -> str:
    return "".join(f"{file_sha256(folder / name)}  {name}\n" for name in sorted(names))


def write_folder_sums(folder: Path) -> Path:
    """Hash every file of `folder` (sub-folders included) into `folder/SHA256SUMS`, atomically."""
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != SUMS]
    return write_atomic(folder / SUMS, sums_text(folder, names).encode("utf-8"))


def write_artifact_sum(artifact: Path) -> Path:
    """`artifact.sha256` beside the artifact, in sha256sum's format."""
    line = f"{file_sha256(artifact)}  {artifact.name}\n"
    return write_atomic(artifact.with_name(artifact.name + SIDECAR), line.encode("utf-8"))


def parse(text: str) -> dict[str, str]:
    """name → sha256 of a sha256sum listing; ValueError on a line that is not one."""
    entries = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f"not a sha256sum line: {line[:80]!r}")
        entries[name.removeprefix("*")] = digest
    return entries


def verify_folder(folder: Path, required: Iterable[str] = ()) -> list[str]:
    """Why a checkpoint folder cannot be trusted: no or a damaged SHA256SUMS, a `required` file it does not
    list, a listed name outside the folder, or a file that does not match (empty when all is well)."""
    try:
        entries = parse((folder / SUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{folder.name} has no {SUMS} (its save did not finish)"]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{folder / SUMS} is damaged ({exc})"]
    problems = [f"{SUMS} does not list {name}" for name in required if name not in entries]
    problems += [f"{SUMS} names {name!r}, outside the checkpoint" for name in entries if not _inside(name)]
    if problems:
        return problems
    return [problem for name, digest in entries.items() if (problem := _check(folder / name, digest))]


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def verify_artifact(artifact: Path) -> list[str]:
    """Why an artifact cannot be trusted: a hash that does not match, or a missing sidecar."""
    sidecar = artifact.with_name(artifact.name + SIDECAR)
    try:
        entries = parse(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{artifact.name} has no {sidecar.name} (an older sdxlc wrote it, or its save was cut)"]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{sidecar} is damaged ({exc})"]
    digest = entries.get(artifact.name)
    if digest is None:
        return [f"{sidecar} does not name {artifact.name}"]
    problem = _check(artifact, digest)
    return [problem] if problem else []


def _check(path: Path, digest: str) -> str | None:
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or type(exc).__name__})"
    return None if actual == digest else f"{path.name} does not match its sha256 (damaged or truncated)"
