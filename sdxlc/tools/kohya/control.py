"""Masked loss, control images and ControlNet-LLLite: kohya's `alpha_mask`, `masked_loss` with a subset's
`conditioning_data_dir`, and `sdxl_train_control_net_lllite.py` (`cond_emb_dim`, `network_dim`) as the
data line's `mask alpha`, `mask "dir"` and `control "dir"`, and the `lllite` statement.

How sd-scripts reads them: `alpha_mask` (a subset key, or the flag) masks the loss with each image's
alpha channel in every network script, with or without `masked_loss`. A subset with
`conditioning_data_dir` makes a ControlNet dataset: with `masked_loss`, the network scripts mask the loss
with the red channel of its same-stem images (they win over the alpha channel); the LLLite script feeds
them to the network as control images. Only a subset's own `conditioning_data_dir` counts with a dataset
config; the flag names the control images of `train_data_dir` for the LLLite script alone.
"""

from __future__ import annotations

from typing import Any

from sdxlc.tools.kohya.build import Builder, num, quote

LLLITE_SCRIPTS = ("sdxl_train_control_net_lllite.py", "sdxl_train_control_net_lllite_old.py")
LLLITE_MODULE = "networks.control_net_lllite"  # the old script's network (and `_for_train`)
_TRUE = (True, "true", "True", "1", 1)


def is_lllite(b: Builder) -> bool:
    """kohya trains a ControlNet-LLLite: its script, its network module, or its `cond_emb_dim`."""
    module = str(b.config.get("network_module") or "")
    return b.config.script in LLLITE_SCRIPTS or module.startswith(LLLITE_MODULE) or b.has("cond_emb_dim")


def data_clauses(b: Builder, params: dict[str, Any], origin: str, lllite: bool) -> list[str]:
    """`mask alpha`, `mask "dir"` or `control "dir"` for one subset (notes for what kohya ignores)."""
    b.used.update(("conditioning_data_dir", "masked_loss", "alpha_mask"))
    folder = params.get("conditioning_data_dir")
    if folder in (None, "") and params.get("_folders") and lllite:
        folder = b.config.get("conditioning_data_dir")  # the LLLite script's `train_data_dir` subset
        origin = b.config.settings["conditioning_data_dir"].origin if folder else origin
    alpha = params.get("alpha_mask", b.config.get("alpha_mask", False)) in _TRUE
    words = []
    if lllite:
        if folder:
            words += ["control", quote(b.path(str(folder), origin))]
        if alpha:
            b.note("alpha_mask", True, "kohya's LLLite training has no masked loss", changes=False)
        return words
    if folder and b.flag("masked_loss"):
        words += ["mask", quote(b.path(str(folder), origin))]
        if alpha:
            b.note("alpha_mask", True, "masked_loss takes the conditioning_data_dir masks over the alpha "
                   "channel", changes=False)
    elif folder:
        b.note("conditioning_data_dir", folder, "a ControlNet dataset: kohya's network training reads it "
               "with masked_loss only")
    elif alpha:
        words += ["mask", "alpha"]
    return words


def note_unread(b: Builder) -> None:
    """`masked_loss` with no mask to read, and a `conditioning_data_dir` flag kohya does not read."""
    if b.flag("masked_loss") and not any(
            s.params.get("conditioning_data_dir") for s in b.config.subsets) and not is_lllite(b):
        b.note("masked_loss", True, "no subset has a conditioning_data_dir: kohya masks with the alpha "
               "channel (`alpha_mask`) or not at all", changes=False)
    folder = b.config.get("conditioning_data_dir")
    if folder and not (is_lllite(b) and not b.config.subsets):
        b.note("conditioning_data_dir", folder, "kohya reads this flag for the LLLite script's "
               "train_data_dir only", changes=False)


def map_lllite(b: Builder) -> None:
    """`lllite cond_dim C mlp_dim M [dropout P]`: kohya's `cond_emb_dim`, `network_dim`, `network_dropout`."""
    b.used.update(("network_module", "network_train_unet_only"))
    words = ["lllite"]
    cond, mlp = b.integer("cond_emb_dim"), b.integer("network_dim")
    if cond is not None:
        words += ["cond_dim", str(cond)]
    if mlp is not None:
        words += ["mlp_dim", str(mlp)]
    if cond is None or mlp is None:
        b.remarks.append("kohya's LLLite script needs --cond_emb_dim and --network_dim; the recipe takes "
                         "sdxlc's defaults (cond_dim 32, mlp_dim 64) for the missing one")
    dropout = b.number("network_dropout", 0)
    if dropout:
        words += ["dropout", num(dropout)]
    if b.has("network_alpha"):
        b.note("network_alpha", b.take("network_alpha"), "an LLLite network has no alpha", changes=False)
    if b.has("network_weights"):
        b.note("network_weights", b.take("network_weights"), "sdxlc's `lllite` starts from a new network")
    if b.has("network_args"):
        b.note("network_args", b.take("network_args"), "the LLLite network takes no arguments")
    b.add(" ".join(words))
