"""Resolve the `lllite` method (ControlNet-LLLite, docs/METHODS.md) and the sample prompts' control images.

The method trains only the LLLite network on the frozen UNet: `targets` is `["unet"]`, there are no
block or text-encoder learning rates. kohya has no built-in defaults (its script requires
`--cond_emb_dim` and `--network_dim`); sdxlc/lang/defaults.py takes its documented example, 32 and 64.

A sample prompt's control image (`sample "…" control "c.png"`) is an input of the run: the plan names
it by absolute path with its size and sha256, like the model's files, so a changed image changes the
plan. One control image serves every prompt; otherwise there is one per prompt.

Pure Python: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxlc.lang.diagnostics import Diagnostic, make
from sdxlc.plan.manifest import file_sha256
from sdxlc.resolve.index import probe_image
from sdxlc.resolve.launch import Builder


def resolve_lllite(b: Builder) -> dict[str, Any]:
    """The plan's `method` for `lllite`."""
    return {
        "kind": "lllite",
        "targets": b.derived("method.targets", ["unet"]),
        "block_lr": b.derived("method.block_lr", None),
        "lr_te1": b.derived("method.lr_te1", None),
        "lr_te2": b.derived("method.lr_te2", None),
        "cond_dim": b.take("lllite.cond_dim", "method.cond_dim"),
        "mlp_dim": b.take("lllite.mlp_dim", "method.mlp_dim"),
        "dropout": b.take("lllite.dropout", "method.dropout"),
    }


def sample_controls(b: Builder, recipe_dir: Path, diags: list[Diagnostic]) -> list[dict[str, Any]]:
    """The plan's `sample.controls`: one {path, size, sha256} per sample prompt, or [] without any."""
    if not b.layers.given("sample.controls"):
        return _none(b)
    given, _ = b.layers.get("sample.controls")
    prompts, _ = b.layers.get("sample.prompts", [])
    span = b.layers.span("sample.controls")
    if not prompts or len(given) not in (1, len(prompts)):  # with no prompt they would be ignored
        diags.append(make("SDX0582", f"{len(given)} sample control images for {len(prompts)} prompts", span,
                          help="give one control image per prompt, in order, or one for all of them"))
        return _none(b)
    base = b.layers.base_dir("sample.controls", recipe_dir)
    files = []
    for name in given if len(given) == len(prompts) else given * len(prompts):
        path = (base / name).resolve()
        # a file that is no image, or a truncated one, would fail the run only at its first sample
        problem = probe_image(path).error if path.is_file() else "Is a directory" if path.is_dir() else None
        try:
            if problem is not None:
                raise OSError(problem)
            files.append({"path": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)})
        except OSError as exc:
            diags.append(make("SDX0583", f"cannot read the sample control image {path}: "
                              f"{exc.strerror or exc}", span,
                              help="name an image file, relative to the recipe"))
            return _none(b)
    b.provenance["sample.controls"] = b.layers.origin("sample.controls")
    return files


def _none(b: Builder) -> list[dict[str, Any]]:
    b.derived("sample.controls", [])
    return []
