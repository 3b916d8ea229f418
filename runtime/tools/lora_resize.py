"""`sdxlc lora resize`: a LoRA at a lower rank, by SVD of each module's weight change (kohya's
resize_lora.py): every module keeps its top singular values, the alpha / rank ratio stays the file's
unless `alpha` is given, and the metadata says what was done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.tools.lora_svd import BadRequest, Factored, network_metadata, read_lora, write_lora


@dataclass
class Row:
    key: str
    old_rank: int
    new_rank: int
    kept_fro: float
    norm: float  # the module's change before the resize


@dataclass
class Resized:
    path: Path
    rows: list[Row]

    @property
    def min_kept(self) -> float:
        return min(row.kept_fro for row in self.rows)

    @property
    def mean_kept(self) -> float:
        return sum(row.kept_fro for row in self.rows) / len(self.rows)

    @property
    def overall_kept(self) -> float:
        """The Frobenius norm the whole LoRA (every module's change together) keeps."""
        whole = sum(row.norm**2 for row in self.rows)
        return (sum((row.kept_fro * row.norm) ** 2 for row in self.rows) / whole) ** 0.5 if whole else 1.0


def describe(dynamic: tuple[str, float] | None) -> str:
    return "fixed" if dynamic is None else f"{dynamic[0]} {dynamic[1]:g}"


def resize(source: Path, out: Path, rank: int | None, alpha: float | None = None,
           dynamic: tuple[str, float] | None = None) -> Resized:
    """Resize every module of `source` to `rank` (with `dynamic`: at most `rank`, default the file's
    rank) and write `out`; BadRequest for a rank above the file's."""
    lora = read_lora(source)
    top = max(module.rank for module in lora.modules.values())
    if rank is not None and rank > top:
        raise BadRequest(f"--rank {rank} is above the rank of {source.name} ({top}): resizing only lowers "
                         "the rank")
    cap = rank if rank is not None else top
    if dynamic is not None and (dynamic[1] <= 0 or (dynamic[0] != "sv_ratio" and dynamic[1] > 1)):
        raise BadRequest(f"--dynamic {describe(dynamic)}: fro and sv_cumulative take a fraction in (0, 1], "
                         "sv_ratio a ratio above 0")
    done: dict[str, Factored] = {}
    for key, module in lora.modules.items():
        done[key] = module.resized(min(cap, module.rank), dynamic, alpha, module.alpha / module.rank)
    rows = [Row(key, lora.modules[key].rank, item.module.rank, item.kept_fro, item.norm)
            for key, item in done.items()]
    result = Resized(out, rows)
    modules = {key: item.module for key, item in done.items()}
    new = network_metadata(modules, lora.metadata)
    old_dim = lora.metadata.get("ss_network_dim", str(top))
    note = {"from_rank": old_dim, "to_rank": new["ss_network_dim"], "rule": describe(dynamic),
            "alpha": "kept ratio" if alpha is None else f"{alpha:g}",
            "kept_fro_min": round(result.min_kept, 6), "kept_fro_mean": round(result.mean_kept, 6),
            "kept_fro_all": round(result.overall_kept, 6)}
    meta = {key: value for key, value in lora.metadata.items() if key != "ss_network_args"}
    meta.update(new)
    meta["sdxlc_resize"] = json.dumps(note, sort_keys=True)
    meta["ss_training_comment"] = (f"dimension is resized from {old_dim} to {new['ss_network_dim']}"
                                   + (f"; {lora.metadata['ss_training_comment']}"
                                      if lora.metadata.get("ss_training_comment") else ""))
    write_lora(out, modules, meta, lora.dtype)
    return result
