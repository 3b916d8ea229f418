"""LyCORIS' network for kohya's scripts (`network_module = "lycoris.kohya"`): its `algo` (`loha`, `lokr`,
`lora`/`locon`), LoKr's `factor` and DoRA's `dora_wd` as sdxlc's `loha`, `lokr` and `lora … dora`
(docs/METHODS.md, "LoHa, LoKr and DoRA"). `sdxlc export kohya` writes the same arguments
(sdxlc/resolve/adapter.py `lycoris_network_args`)."""

from __future__ import annotations

from typing import Any

from sdxlc.tools.kohya.build import Builder

MODULE = "lycoris.kohya"
KEYS = ("algo", "factor", "dora_wd", "wd_on_output")  # the arguments read here
ALGOS = {"loha": "loha", "lokr": "lokr", "lora": "lora", "locon": "lora"}


def network_args(raw: Any) -> dict[str, str]:
    """kohya's `network_args` (a list of `key=value`, or one string of them) as a dict."""
    pairs = raw if isinstance(raw, list) else str(raw or "").split()
    args = {}
    for pair in pairs:
        key, _, value = str(pair).partition("=")
        args[key.strip()] = value.strip().strip('"')
    return args


def statement(b: Builder) -> list[str] | None:
    """The statement keyword, then the clauses (`factor 4`, `dora`) of a LyCORIS network sdxlc trains;
    None (with a note) for another algorithm."""
    args = network_args(b.config.get("network_args"))
    algo = args.get("algo", "lora").lower()
    if algo not in ALGOS:
        b.note("network_args", f"algo={algo}", "sdxlc trains LyCORIS' loha, lokr and lora (locon) only")
        return None
    words = [ALGOS[algo]]
    if algo == "lokr" and args.get("factor") not in (None, ""):
        words += ["factor", args["factor"]]
    if args.get("dora_wd", "").lower() in ("true", "1"):
        if args.get("wd_on_output", "true").lower() not in ("true", "1"):
            b.note("network_args", "wd_on_output=False", "sdxlc's DoRA scales each output row (wd_on_output)")
        words.append("dora")
    return words


def drop_args(args: dict[str, str], module: Any) -> None:
    """Leave out of `args` what `statement` reads, for a LyCORIS network."""
    if module == MODULE:
        for key in KEYS:
            args.pop(key, None)
