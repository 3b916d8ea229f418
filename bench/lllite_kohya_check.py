"""sdxlc's ControlNet-LLLite file, loaded by kohya-ss/sd-scripts' own code, at full SDXL size.

Usage: python bench/lllite_kohya_check.py --sd-scripts DIR [--dims 32x64 --dims 128x16] [--commit SHA]
       [--out FILE.md]

DIR is a kohya sd-scripts work tree (it is put on sys.path; nothing of it is copied here). For each
(cond_dim, mlp_dim) pair:

1. a full-size SDXL diffusers UNet from the shipped config (sdxlc/data/sdxl_config/unet) is built on the
   meta device (no weight memory); sdxlc's LLLite network is attached (runtime/methods/lllite_net.py),
   materialised on the CPU alone and filled with seeded random non-zero weights (`up` included), then saved
   with sdxlc's own save (runtime/methods/lllite.py `save`) to a temp .safetensors file;
2. kohya's `SdxlUNet2DConditionModel` is built on the meta device and kohya's `ControlNetLLLite(unet,
   cond_emb_dim, mlp_dim)` on the CPU, `apply_to()` is called (it registers the `lllite_unet_…` modules, as
   sdxl_gen_img.py does before loading), and the file is loaded with kohya's `load_weights` (non-strict:
   its missing and unexpected keys are reported) and then with `load_state_dict(strict=True)`, as
   sdxl_gen_img.py / gen_img.py do; shapes are compared key by key beforehand;
3. sdxl_gen_img.py's own loop that infers `cond_emb_dim` / `mlp_dim` from the file's tensors is taken out
   of that script's source (ast) and run on the file's state dict: it must give back the dims;
4. numeric check, every module: its targeted linear layer is materialised (same random weights) in both
   UNets, a random control image (1, 3, 256, 256) is set on both networks
   (sdxlc `control`, kohya `set_cond_image`), and the layer is called on the same random input through
   each code base's own path (sdxlc's forward pre-hook, kohya's replaced `forward`); the conditioning
   embeddings and the layer outputs must agree, and the output must differ from the plain layer's.

When kohya's `library/utils.py` cannot be imported (it imports torchvision and cv2 at the top, and a
torchvision build that matches the installed torch may not exist), a stand-in module that provides only
`setup_logging` — the one name library/sdxl_original_unet.py and networks/control_net_lllite.py import
from it — is put in its place; the result says so.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SEED = 1234
CONTROL_SIZE = 256


def import_kohya(sd_scripts: Path) -> tuple[Any, Any, str]:
    """kohya's sdxl_original_unet and control_net_lllite modules, and a note on how library.utils came."""
    sys.path.insert(0, str(sd_scripts))
    note = "kohya's library/utils.py imported as is"
    try:
        importlib.import_module("library.utils")
    except ImportError as exc:
        import logging

        stand_in = types.ModuleType("library.utils")

        def setup_logging(*_: Any, **__: Any) -> None:
            if not logging.root.handlers:
                logging.basicConfig(level=logging.INFO)

        stand_in.setup_logging = setup_logging  # type: ignore[attr-defined]
        sys.modules["library.utils"] = stand_in
        note = (f"kohya's library/utils.py does not import here ({exc}); a stand-in providing only "
                "`setup_logging` replaced it")
    unet_mod = importlib.import_module("library.sdxl_original_unet")
    net_mod = importlib.import_module("networks.control_net_lllite")
    return unet_mod, net_mod, note


def kohya_dims_rule(sd_scripts: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Run the dims-inference loop of sdxl_gen_img.py (and gen_img.py) on `state`, from their source."""
    out: dict[str, tuple[int, int]] = {}
    for script in ("sdxl_gen_img.py", "gen_img.py"):
        path = sd_scripts / script
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        loops: list[ast.stmt] = [node for node in ast.walk(tree) if isinstance(node, ast.For)
                 and ast.unparse(node.iter) == "state_dict.items()"
                 and "mlp_dim" in ast.unparse(node) and "cond_emb_dim" in ast.unparse(node)]
        if len(loops) != 1:
            raise SystemExit(f"{path}: found {len(loops)} LLLite dims loops, expected 1")
        code = compile(ast.Module(body=loops, type_ignores=[]), str(path), "exec")
        scope: dict[str, Any] = {"state_dict": state, "mlp_dim": None, "cond_emb_dim": None}
        exec(code, scope)  # noqa: S102 - kohya's own loop, from the work tree given on the command line
        out[script] = (scope["cond_emb_dim"], scope["mlp_dim"])
    return out


def sdxlc_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    from runtime.formats.single_file import SDXL_CONFIG_DIR

    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def fill(module: torch.nn.Module, seed: int) -> None:
    """Seeded random non-zero weights for every parameter of `module` (materialised on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def flat(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def check_pair(unet_mod: Any, net_mod: Any, sd_scripts: Path, cond_dim: int, mlp_dim: int,
               folder: Path) -> tuple[list[str], bool]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from runtime.methods import lllite, lllite_net

    lines, ok = [f"### cond_dim {cond_dim}, mlp_dim {mlp_dim}", ""], True

    # 1. sdxlc: full-size UNet on meta, LLLite network materialised and saved with sdxlc's save
    unet = sdxlc_unet()
    net = lllite_net.attach(unet, cond_dim, mlp_dim)
    net.to_empty(device="cpu")
    fill(net, SEED)
    found = lllite_net.targets(unet)
    path = folder / f"lllite_{cond_dim}x{mlp_dim}.safetensors"
    meta = {"ss_cond_emb_dim": str(cond_dim), "ss_network_dim": str(mlp_dim),
            "modelspec.architecture": lllite.ARCHITECTURE}
    lllite.save(path, unet, torch.float32, meta)
    state = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        file_meta = handle.metadata() or {}
    n_params = sum(v.numel() for v in state.values())
    lines.append(f"- sdxlc file: {len(found)} LLLite modules, {len(state)} tensors, {n_params:,} parameters, "
                 f"{path.stat().st_size / 2**20:.1f} MiB")

    # 2. kohya: SdxlUNet2DConditionModel (meta) + ControlNetLLLite (CPU), apply_to, load
    with torch.device("meta"):
        k_unet = unet_mod.SdxlUNet2DConditionModel()
    k_net = net_mod.ControlNetLLLite(k_unet, cond_dim, mlp_dim)
    k_net.apply_to()
    own = k_net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} kohya {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    lines.append(f"- kohya ControlNetLLLite: {len(k_net.unet_modules)} modules, {len(own)} tensors")
    try:  # non-strict, but torch still raises on a shape mismatch
        info = k_net.load_weights(str(path))
        lines.append(f"- kohya `load_weights` (strict=False): missing_keys {len(info.missing_keys)}, "
                     f"unexpected_keys {len(info.unexpected_keys)}")
        ok = not (info.missing_keys or info.unexpected_keys)
    except RuntimeError as exc:
        lines.append(f"- kohya `load_weights` (strict=False): FAILED ({flat(exc)})")
        ok = False
    lines.append(f"- key sets: missing {len(missing)}, unexpected {len(unexpected)}, "
                 f"shape mismatches {len(shapes)}")
    for item in (missing[:5] + unexpected[:5] + shapes[:5]):
        lines.append(f"  - {item}")
    try:
        k_net.load_state_dict(state, strict=True)
        lines.append("- kohya `load_state_dict(strict=True)` (as sdxl_gen_img.py loads): OK")
    except RuntimeError as exc:
        lines.append(f"- kohya `load_state_dict(strict=True)`: FAILED ({flat(exc)})")
        ok = False
    ok = ok and not (missing or unexpected or shapes)
    k_state = k_net.state_dict()
    same = ok and all(torch.equal(k_state[k], state[k]) for k in state)
    lines.append(f"- every loaded tensor equals the file's: {same}")
    ok = ok and same

    # 3. sdxl_gen_img.py's dims rule on the file; sdxlc's own reading; the metadata
    for script, dims in kohya_dims_rule(sd_scripts, state).items():
        good = dims == (cond_dim, mlp_dim)
        ok = ok and good
        lines.append(f"- {script} dims loop → cond_emb_dim {dims[0]}, mlp_dim {dims[1]}: "
                     f"{'OK' if good else 'MISMATCH'}")
    sd_dims = lllite_net.dims_of(state)
    ok = ok and sd_dims == (cond_dim, mlp_dim)
    lines.append(f"- sdxlc `dims_of` → {sd_dims}; file metadata: " + ", ".join(
        f"{k}={file_meta.get(k)}" for k in ("ss_cond_emb_dim", "ss_network_dim", "modelspec.architecture")))

    # 4. numeric: every module, through each code base's forward path
    if not same:
        lines += ["- numeric: skipped (kohya did not load the file)", "", "**FAIL**", ""]
        return lines, False
    k_modules = {m.lllite_name: m for m in k_net.unet_modules}
    gen = torch.Generator().manual_seed(SEED + 1)
    image = torch.rand(1, 3, CONTROL_SIZE, CONTROL_SIZE, generator=gen) * 2 - 1
    net.control(image)
    k_net.set_cond_image(image)
    worst: dict[int, tuple[float, float, float, int, str]] = {}
    bad: list[str] = []
    for index, (name, (d_path, width, depth)) in enumerate(sorted(found.items())):
        k_mod = k_modules[name]
        layer, k_layer = unet.get_submodule(d_path), k_mod.org_module[0]
        layer.to_empty(device="cpu")
        k_layer.to_empty(device="cpu")
        fill(layer, SEED + 2 + index)
        fill(k_layer, SEED + 2 + index)
        tokens = (CONTROL_SIZE // (8 * 2 ** (depth - 1))) ** 2
        x = torch.randn(1, tokens, width, generator=gen)
        with torch.no_grad():
            emb = net.blocks[name].embed(image)
            out, k_out = layer(x), k_layer(x)
            plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
        emb_diff = (emb - k_mod.cond_emb).abs().max().item() if emb.shape == k_mod.cond_emb.shape else 1e9
        out_diff = (out - k_out).abs().max().item()
        moved = (out - plain).abs().max().item()
        if not (emb_diff < 1e-5 and out_diff < 1e-4 and moved > 1e-3):
            bad.append(f"{name}: embedding max|Δ| {emb_diff:.2e}, output max|Δ| {out_diff:.2e}, "
                       f"moved {moved:.2e}")
        old = worst.get(depth)
        if old is None:
            worst[depth] = (emb_diff, out_diff, moved, 1, name)
        else:
            worst[depth] = (max(emb_diff, old[0]), max(out_diff, old[1]), min(moved, old[2]), old[3] + 1,
                            old[4])
        layer.to("meta")  # give the layer's memory back
        k_layer.to("meta")
    for depth, (emb_diff, out_diff, moved, count, example) in sorted(worst.items()):
        tokens = (CONTROL_SIZE // (8 * 2 ** (depth - 1))) ** 2
        lines.append(f"- numeric, depth {depth}: {count} modules (e.g. `{example}`), control image "
                     f"(1, 3, {CONTROL_SIZE}, {CONTROL_SIZE}) → {tokens} tokens; "
                     f"embedding max|Δ| {emb_diff:.2e}, layer output max|Δ| {out_diff:.2e} "
                     f"(LLLite moves the output by at least {moved:.3f})")
    lines.append(f"- numeric: {len(found) - len(bad)} of {len(found)} modules agree (sdxlc `embed` vs "
                 "kohya `cond_emb`; sdxlc's hooked layer vs kohya's replaced forward)")
    lines += [f"  - {item}" for item in bad[:5]]
    ok = ok and not bad
    net.control(None)
    lines += ["", f"**{'PASS' if ok else 'FAIL'}**", ""]
    return lines, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd-scripts", type=Path, required=True, help="a kohya sd-scripts work tree")
    parser.add_argument("--dims", action="append", default=None,
                        help="COND_DIMxMLP_DIM (repeatable; default 32x64 and 128x16)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result here (markdown)")
    parser.add_argument("--commit", default=None,
                        help="the work tree's commit, when it is not a git checkout")
    args = parser.parse_args()
    sd_scripts = args.sd_scripts.resolve()
    pairs = [tuple(int(v) for v in d.lower().split("x")) for d in (args.dims or ["32x64", "128x16"])]

    torch.manual_seed(SEED)
    unet_mod, net_mod, note = import_kohya(sd_scripts)
    commit = args.commit or subprocess.run(
        ["git", "-C", str(sd_scripts), "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True
    ).stdout.strip() or "unknown (not a git work tree)"
    lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- sd-scripts: {sd_scripts} (commit {commit})",
             f"- torch {torch.__version__}; {note}",
             f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`", ""]
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="lllite_kohya_") as tmp:
        for cond_dim, mlp_dim in pairs:
            part, ok = check_pair(unet_mod, net_mod, sd_scripts, cond_dim, mlp_dim, Path(tmp))
            lines += part
            all_ok = all_ok and ok
    lines.append(f"**overall: {'PASS' if all_ok else 'FAIL'}**")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
