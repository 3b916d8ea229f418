"""Textual inversion: new tokens in both tokenizers and text encoders, only their embedding rows trained.

Each encoder's token embedding is replaced by `TrainedRows`: the frozen table, plus a small trainable
parameter holding the rows of the new tokens. Rows of every other token can never change (kohya restores
them after each step; here they are not trained at all), and the optimizer state covers only the
new rows. The file is kohya's and diffusers' SDXL layout, `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.

A token of n vectors is n tokens, `<tok>`, `<tok>_1` … `<tok>_{n-1}` (diffusers' naming, so that
`load_textual_inversion` and the pipeline's prompt expansion find them); captions are expanded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runtime import RunError
from runtime.formats.safetensors_file import to_bytes as safetensors_bytes
from runtime.methods.base import CaptionMap, Method, keep_fp32, training_metadata
from sdxlc.plan.files import write_atomic

FILE_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}

# kohya's (and the original textual inversion's) caption templates
OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
    "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}",
    "a photo of the weird {}", "a photo of the large {}", "a photo of a cool {}",
    "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}",
    "a dirty painting in the style of {}", "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a cropped painting in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}",
    "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}", "a large painting in the style of {}",
]


class TrainedRows(torch.nn.Module):
    """A token embedding whose rows from `first` on come from the trainable parameter `rows`."""

    def __init__(self, base: torch.nn.Embedding, first: int) -> None:
        super().__init__()
        self.weight = base.weight  # the frozen table, new rows included (their initial values)
        self.first = first
        self.rows = torch.nn.Parameter(base.weight.detach()[first:].clone().float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.embedding(ids, self.weight)
        new = ids >= self.first
        if not bool(new.any()):
            return out
        picked = self.rows[(ids - self.first).clamp(min=0)].to(out.dtype)
        return torch.where(new[..., None], picked, out)


def attach(pipe: Any, method: dict[str, Any]) -> None:
    """Add the tokens to both tokenizers, start their rows from the init word, make only them trainable."""
    tokens = list(method["tokens"])
    for tokenizer_name, encoder_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, encoder_name)
        init = tokenizer.encode(method["init"], add_special_tokens=False)
        if not init:
            raise RunError(f"the init word {method['init']!r} has no tokens in {tokenizer_name}")
        first, known = len(tokenizer), tokenizer.get_vocab()
        taken = [token for token in tokens if token in known]
        tokenizer.add_tokens(tokens)
        if taken or len(tokenizer) != first + len(tokens):
            first_taken = (taken or tokens)[0]
            raise RunError(f"{first_taken!r} is already a token of {tokenizer_name}: choose a new token")
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set from init below
        table = encoder.get_input_embeddings()
        with torch.no_grad():
            for i in range(len(tokens)):
                table.weight[first + i] = table.weight[init[i % len(init)]]
        rows = TrainedRows(table, first)
        _set_input_embeddings(encoder, rows)
        encoder.requires_grad_(False)
        rows.rows.requires_grad_(True)


def _set_input_embeddings(encoder: torch.nn.Module, module: torch.nn.Module) -> None:
    embeddings = encoder.get_input_embeddings()
    for _, child in encoder.named_modules():
        if getattr(child, "token_embedding", None) is embeddings:
            child.token_embedding = module
            return
    raise RunError(f"{type(encoder).__name__} has no token_embedding to train")


def trained_rows(pipe: Any) -> dict[str, torch.nn.Parameter]:
    """The trainable rows of each encoder by pipeline attribute."""
    out = {}
    for name in FILE_KEYS:
        module = getattr(pipe, name).get_input_embeddings()
        if not isinstance(module, TrainedRows):
            raise RunError(f"{name} has no trained embedding rows")
        out[name] = module.rows
    return out


def param_groups(pipe: Any, lr: float) -> list[dict[str, Any]]:
    rows = trained_rows(pipe)
    return [{"params": [rows[name]], "lr": lr, "block": None, "part": FILE_KEYS[name]} for name in FILE_KEYS]


def state_dict(pipe: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    rows = trained_rows(pipe)
    return {FILE_KEYS[name]: value.detach().to("cpu", dtype).contiguous() for name, value in rows.items()}


def save(path: Path, pipe: Any, dtype: torch.dtype, meta: dict[str, str]) -> Path:
    write_atomic(path, safetensors_bytes(state_dict(pipe, dtype), metadata=meta))
    return path


def caption_map(method: dict[str, Any]) -> CaptionMap:
    """Captions for a batch: a template caption where the plan asks for templates or the caption is
    empty, the token put in front of a caption that lacks it, and the token expanded to all its vectors.
    Templates are drawn with torch's generator (the loop seeds it per batch)."""
    token, tokens = method["token"], list(method["tokens"])
    templates = STYLE_TEMPLATES if method["template"] == "style" else OBJECT_TEMPLATES
    always = method["captions"] == "template"

    def expand(text: str) -> str:
        return text if len(tokens) == 1 or tokens[1] in text else text.replace(token, " ".join(tokens))

    def apply(captions: list[str]) -> list[str]:
        out = []
        for caption in captions:
            if always or not caption.strip():
                caption = templates[int(torch.randint(len(templates), ()))].format(token)
            elif token not in caption:  # a caption must name the token for its vectors to learn
                caption = f"{token}, {caption}"
            out.append(expand(caption))
        return out

    return apply


class EmbeddingMethod(Method):
    """`embedding`: new token rows of both encoders, saved as `{"clip_l", "clip_g"}`."""

    def attach(self, pipe: Any) -> None:
        attach(pipe, self.spec)
        keep_fp32(pipe)

    def param_groups(self, pipe: Any) -> list[dict[str, Any]]:
        return param_groups(pipe, self.plan["optimizer"]["lr"])

    def caption_map(self) -> CaptionMap:
        return caption_map(self.spec)

    def save(self, path: Path, pipe: Any, step: int, epoch: int, started: float) -> Path:
        meta = {**training_metadata(self.plan, step, epoch, started, self.lineage),
                "modelspec.architecture": "stable-diffusion-xl-v1-base/textual-inversion",
                "ss_token_string": self.spec["token"], "ss_num_vectors": str(self.spec["vectors"])}
        return save(path, pipe, self.save_dtype, meta)
