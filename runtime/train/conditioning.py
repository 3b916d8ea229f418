"""What a batch is conditioned on: its latents and text embeddings, from the caches the plan asks for.

The VAE and text-encoder passes, the in-memory and content-addressed disk caches shared out over the
processes, and `precompute` (the work of `sdxlc cache`). The cache package stores entries; this module
decides what to encode, so the cache imports nothing of training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from runtime import InputChanged, RunError
from runtime.cache.store import (
    Counts,
    DiskCache,
    fingerprint,
    latent_key,
    text_key,
    tokenizer_fingerprint,
)
from runtime.model.load import Models
from runtime.model.offload import visiting
from runtime.train.companions import load_mask, mask_identity
from runtime.train.data import (
    Batch,
    Sample,
    TrainData,
    all_captions,
    decode,
    load_pixels,
    make_batch,
    mark_bad,
    setting,
)

Say = Callable[[str], None]
Shapes = dict[str, tuple[int, ...]]  # a cache entry's tensors and their shapes
HOST = torch.device("cpu")  # cached entries live in host memory; each batch's entries visit the device


@torch.no_grad()
def encode_text(models: Models, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' penultimate hidden states side by side, and TE2's pooled projection (offloaded
    encoders visit the device for it: runtime/model/offload.py)."""
    pipe = models.pipe
    with visiting(pipe.text_encoder, models.device), visiting(pipe.text_encoder_2, models.device):
        return text_states(models, captions)


def text_states(models: Models, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_text` with gradients: for methods that train the text encoders or their embeddings."""
    pipe = models.pipe
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else None
    if pooled is None:
        raise RunError("text_encoder_2 gives no pooled projection (text_embeds)")
    return torch.cat(states, dim=-1).to(models.device), pooled.to(models.device)


@torch.no_grad()
def encode_pixels(models: Models, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's latent distribution parameters (mean and log-variance) for a batch of pixels."""
    vae = models.pipe.vae
    return vae.encode(pixels.to(models.device, models.vae_dtype, non_blocking=True)).latent_dist.parameters


@torch.no_grad()
def encode_finite(models: Models, pixels: torch.Tensor, say: Say, what: str) -> torch.Tensor:
    """`encode_pixels`; NaN or inf in the result encodes the batch again with the VAE in fp32."""
    with visiting(models.pipe.vae, models.device):
        return _encode_finite(models, pixels, say, what)


def _encode_finite(models: Models, pixels: torch.Tensor, say: Say, what: str) -> torch.Tensor:
    parameters = encode_pixels(models, pixels)
    if torch.isfinite(parameters).all():
        return parameters
    vae = models.pipe.vae
    dtype = vae.dtype
    say(f"{what}: the VAE gave NaN/inf latents in {str(dtype).removeprefix('torch.')}; encoded again in fp32")
    vae.to(torch.float32)
    try:
        parameters = vae.encode(pixels.to(models.device, torch.float32)).latent_dist.parameters
    finally:
        vae.to(dtype)
    if not torch.isfinite(parameters).all():
        raise RunError(f"{what}: the VAE gives NaN/inf latents even in fp32")
    return parameters.to(models.vae_dtype)


def sample_latents(models: Models, parameters: torch.Tensor) -> torch.Tensor:
    latents = DiagonalGaussianDistribution(parameters).sample()
    return (latents * models.pipe.vae.config.scaling_factor).to(models.weight_dtype)


class Conditioning:
    """Latents and text embeddings for a batch, from the caches the plan asks for.

    Without `to_disk` the cached entries are kept in host memory for this run (as kohya keeps its
    latents), never on the training device: a data set's cache grows with its images and captions, the
    device's memory does not; each batch's entries are copied to the device when it is trained on. With
    `to_disk` every entry is looked up in the content-addressed disk cache (runtime/cache/store.py) first
    and stored there when it had to be encoded, and only its key is kept: each batch reads its entries
    from the disk cache (checked on read) when it is trained on, so the run's memory does not grow with
    the data set. An entry that is damaged or gone by then is encoded again (and stored again).

    With N processes, rank r encodes only images and captions r, r+N, r+2N, … and the ranks then
    exchange their shares: through the disk cache with `to_disk` (each rank writes its share, all wait,
    every rank loads the rest), otherwise by gathering the tensors (on the CPU) from every rank. Every
    rank ends with the whole cache; the counts are totals over the ranks, printed by the main process.
    """

    def __init__(
        self, models: Models, data: TrainData, cache: dict[str, Any], say: Say | None = None
    ) -> None:
        self.models, self.data = models, data
        self.say: Say = say or (lambda text: None)
        self.disk = DiskCache(cache["dir"]) if cache["to_disk"] else None
        acc = models.accelerator
        self.rank, self.world = int(acc.process_index), int(acc.num_processes)
        self.latent_counts, self.text_counts = Counts(), Counts()
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.latents: dict[tuple[int, bool], torch.Tensor] | None = None
        self.masks: dict[tuple[int, bool], torch.Tensor] | None = None  # with cached latents of a masked run
        # with `to_disk`, the disk keys instead of the tensors (`text` and `latents` stay empty)
        self.text_keys: dict[str, str] = {}
        self.latent_keys: dict[tuple[int, bool], tuple[str, Sample, Shapes]] = {}  # key, sample, shapes
        self.text_shapes: Shapes = {}
        self.shown = 0
        self.text_grad = False  # encode captions with gradients (the method trains the text encoders)
        self.captions: Callable[[list[str]], list[str]] | None = None  # the method's caption rewrite
        if cache["text_encoder"]:
            self._cache_text()
        if cache["latents"]:
            self._cache_latents()
        if self.disk is not None and acc.is_main_process:
            self.say(f"latent cache: {self.latent_counts}; text-encoder cache: {self.text_counts}")
        self._flush()

    def _flush(self) -> None:
        if self.disk is not None:
            self.data.warnings.extend(self.disk.warnings)
            self.disk.warnings.clear()
        for warning in self.data.warnings[self.shown :]:
            self.say(f"warning: {warning}")
        self.shown = len(self.data.warnings)

    def _text_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of one caption's cached encoder outputs."""
        pipe = self.models.pipe
        width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        return {"states": (pipe.tokenizer.model_max_length, width),
                "pooled": (pipe.text_encoder_2.config.projection_dim,)}

    def _latent_shape(self, bucket: tuple[int, int], masked: bool = False) -> dict[str, tuple[int, ...]]:
        """The shape of one image's cached latent distribution (mean and log-variance) at its bucket, and
        of its mask when it has one."""
        config = self.models.pipe.vae.config
        down = 2 ** (len(config.block_out_channels) - 1)
        mask = {"mask": (1, bucket[1], bucket[0])} if masked else {}
        return {"parameters": (2 * config.latent_channels, bucket[1] // down, bucket[0] // down), **mask}

    def _gather(self, mine: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order (this rank's own with one process)."""
        if self.world <= 1:
            return mine
        return list(gather_object(mine))

    def _total(self, counts: Counts) -> Counts:
        """The counts summed over the ranks."""
        pairs = self._gather([(counts.encoded, counts.reused)])
        return Counts(sum(e for e, _ in pairs), sum(r for _, r in pairs))

    def _cache_text(self) -> None:
        if any(d["shuffle"] or setting(d, "tag_dropout") > 0 for d in self.data.datasets):
            raise RunError(
                "shuffled captions (or tag dropout) change every step: they cannot use the text-encoder cache"
            )
        self.text = {}
        device = HOST
        identity = text_identity(self.models.pipe) if self.disk is not None else None
        captions = all_captions(self.data)
        keys = {c: text_key(c, *identity) if identity is not None else "" for c in captions}
        counts = Counts()
        shapes = self.text_shapes = self._text_shapes()
        for caption in captions[self.rank :: self.world]:
            entry = self.disk.load("text", keys[caption], shapes) if self.disk is not None else None
            if entry is not None:
                self.text_keys[caption] = keys[caption]  # read again when a batch needs it
                counts.reused += 1
                continue
            states, pooled = encode_text(self.models, [caption])
            counts.encoded += 1
            if self.disk is not None:
                self.disk.store("text", keys[caption], {"states": states[0], "pooled": pooled[0]})
                self.text_keys[caption] = keys[caption]
            else:
                self.text[caption] = (states[0].to(HOST), pooled[0].to(HOST))
        if self.world > 1:
            if self.disk is not None:
                self.models.accelerator.wait_for_everyone()  # every share is on disk
                for caption in captions:
                    if caption not in self.text_keys:
                        if not self.disk.path("text", keys[caption]).is_file():  # checked when read
                            raise RunError(f"text-encoder cache: another process's entry for {caption!r} "
                                           f"is missing from {self.disk.root}")
                        self.text_keys[caption] = keys[caption]
            else:
                mine = [(c, s.cpu(), p.cpu()) for c, (s, p) in self.text.items()]
                for caption, states, pooled in self._gather(mine):
                    self.text.setdefault(caption, (states.to(device), pooled.to(device)))
        self.text_counts = self._total(counts)
        if self.models.device.type != "cpu":
            self.models.pipe.text_encoder.to("cpu")
            self.models.pipe.text_encoder_2.to("cpu")

    def _cache_latents(self) -> None:
        self.latents = {}
        self.masks = {} if self.data.masks else None
        first: dict[int, Sample] = {}
        for sample in self.data.samples:
            first.setdefault(sample.image, sample)
        vae, dtype = vae_identity(self.models) if self.disk is not None else ("", "")
        device = HOST
        counts = Counts()
        keys: dict[tuple[int, bool], str] = {}  # the disk keys of this rank's share
        bad: list[tuple[int, str]] = []  # images of this rank's share that could not be read
        for image, sample in list(first.items())[self.rank :: self.world]:
            item = self.data.images[image]
            for flip in (False, True) if self.data.datasets[item.dataset]["flip"] else (False,):
                key, masked = "", mask_identity(item) if self.data.masks else ""
                if self.disk is not None:  # keyed by the planned bytes (checked when they are read)
                    key = latent_key(item.sha256, sample.bucket, sample.crop, flip, vae, dtype, masked)
                    keys[(image, flip)] = key
                    shapes = self._latent_shape(sample.bucket, bool(masked))
                    entry = self.disk.load("latents", key, shapes)
                    if entry is not None:
                        self.latent_keys[(image, flip)] = (key, sample, shapes)
                        counts.reused += 1
                        continue
                try:
                    decoded = decode(item)
                    pixels = load_pixels(item, sample.crop, sample.bucket, flip, decoded=decoded)
                    mask = None if self.masks is None else load_mask(item, sample.crop, sample.bucket, flip,
                                                                     decoded)
                except InputChanged:
                    raise
                except RunError as exc:
                    bad.append((image, str(exc)))
                    break
                parameters = encode_finite(self.models, pixels[None], self.say, item.path)[0].to(HOST)
                counts.encoded += 1
                if self.disk is not None:
                    with_mask = {"mask": mask} if masked and mask is not None else {}
                    self.disk.store("latents", key, {"parameters": parameters, **with_mask})
                    self.latent_keys[(image, flip)] = (key, sample, shapes)
                    continue
                self.latents[(image, flip)] = parameters
                if mask is not None:
                    self.masks[(image, flip)] = mask  # type: ignore[index]
        if self.world > 1:
            bad = self._gather(bad)
            if self.disk is not None:
                self.models.accelerator.wait_for_everyone()  # every share is on disk
                for (image, flip), key in self._gather([(k, keys[k]) for k in self.latent_keys]):
                    if (image, flip) not in self.latent_keys:
                        if not self.disk.path("latents", key).is_file():  # checked when read
                            raise RunError(f"latent cache: another process's entry for "
                                           f"{self.data.images[image].path} is missing from {self.disk.root}")
                        item = self.data.images[image]
                        masked = bool(mask_identity(item)) if self.data.masks else False
                        self.latent_keys[(image, flip)] = (key, first[image],
                                                           self._latent_shape(first[image].bucket, masked))
            else:
                mine = [(k, v.cpu()) for k, v in self.latents.items()]
                for (image, flip), parameters in self._gather(mine):
                    self.latents.setdefault((image, flip), parameters.to(device))
        for image, reason in sorted(bad):
            mark_bad(self.data, image, reason)
        self._other_masks(first)
        self.latent_counts = self._total(counts)
        if self.models.device.type != "cpu":  # cached latents free the VAE (sampling brings it back)
            self.models.pipe.vae.to("cpu")

    def _other_masks(self, first: dict[int, Sample]) -> None:
        """The masks of the latents other processes encoded (each rank cuts them itself: they are small)."""
        if self.masks is None or self.latents is None:
            return
        for image, flip in self.latents.keys() - self.masks.keys():
            sample, item = first[image], self.data.images[image]
            self.masks[(image, flip)] = load_mask(item, sample.crop, sample.bucket, flip)

    def held_tensors(self) -> int:
        """How many cached tensors this process keeps in memory (none with `to_disk`)."""
        return sum(len(cache) * width for cache, width in ((self.text or {}, 2), (self.latents or {}, 1),
                                                           (self.masks or {}, 1)))

    def _text_entry(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A caption's cached (states, pooled): from memory, or read from the disk cache."""
        assert self.text is not None
        if self.disk is None:
            return self.text[caption]
        key = self.text_keys[caption]
        entry = self.disk.load("text", key, self.text_shapes)
        if entry is None:  # damaged or gone since the caching pass: encode it again
            entry = self._encode_again("text", key, lambda: self._text_tensors(caption),
                                       f"caption {caption!r}")
        return entry["states"], entry["pooled"]

    def _text_tensors(self, caption: str) -> dict[str, torch.Tensor]:
        states, pooled = encode_text(self.models, [caption])
        return {"states": states[0].to(HOST), "pooled": pooled[0].to(HOST)}

    def _latent_entry(self, key: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An (image, flip)'s cached latent parameters and its mask (None unmasked): from memory, or read
        from the disk cache."""
        assert self.latents is not None
        if self.disk is None:
            return self.latents[key], None if self.masks is None else self.masks[key]
        disk_key, sample, shapes = self.latent_keys[key]
        entry = self.disk.load("latents", disk_key, shapes)
        if entry is None:  # damaged or gone since the caching pass: encode it again
            item, masked = self.data.images[key[0]], "mask" in shapes
            entry = self._encode_again("latents", disk_key, lambda: self._latent_tensors(key, sample, masked),
                                       f"the latents of {item.path}")
        if self.masks is None:
            return entry["parameters"], None
        mask = entry.get("mask")
        if mask is None:  # an entry stored without its mask (another process's): cut it from the image
            mask = load_mask(self.data.images[key[0]], sample.crop, sample.bucket, key[1])
        return entry["parameters"], mask

    def _latent_tensors(self, key: tuple[int, bool], sample: Sample, masked: bool) -> dict[str, torch.Tensor]:
        item, flip = self.data.images[key[0]], key[1]
        decoded = decode(item)
        pixels = load_pixels(item, sample.crop, sample.bucket, flip, decoded=decoded)
        vae = self.models.pipe.vae
        here = next(vae.parameters()).device
        vae.to(self.models.device)  # parked on the CPU after the caching pass
        try:
            parameters = encode_finite(self.models, pixels[None], self.say, item.path)[0].to(HOST)
        finally:
            vae.to(here)
        mask = load_mask(item, sample.crop, sample.bucket, flip, decoded) if masked else None
        return {"parameters": parameters, **({"mask": mask} if mask is not None else {})}

    def _encode_again(self, kind: str, key: str, encode: Callable[[], dict[str, torch.Tensor]],
                      what: str) -> dict[str, torch.Tensor]:
        """A disk entry a batch needs that is damaged or gone, encoded again and stored again; a RunError
        naming it when its encoder is not loaded or its input cannot be read."""
        assert self.disk is not None
        pipe = self.models.pipe
        encoders = (pipe.vae,) if kind == "latents" else (pipe.text_encoder, pipe.text_encoder_2)
        where = self.disk.path(kind, key)
        if any(encoder is None for encoder in encoders):
            raise RunError(f"{kind} cache: the entry for {what} ({where}) is damaged or gone, and its "
                           "encoder is not loaded to encode it again; run `sdxlc cache RECIPE` to fill it")
        try:  # a damaged one is named in the disk cache's warnings already
            gone = not where.is_file()
        except OSError:  # its folder cannot be searched: named in the warnings too
            gone = False
        try:
            with torch.no_grad():
                tensors = encode()
        except InputChanged:
            raise
        except RunError as exc:
            raise RunError(f"{kind} cache: the entry for {what} ({where}) is damaged or gone, and it cannot "
                           f"be encoded again: {exc}") from exc
        try:
            self.disk.store(kind, key, tensors)
        except RunError as exc:  # a read-only or full cache folder: say why the entry was written
            self._flush()
            raise RunError(f"{kind} cache: the entry for {what} is damaged or gone, and storing it again "
                           f"failed: {exc}") from exc
        if gone:
            self.say(f"{kind} cache: the entry for {what} is gone from {where}: encoded again")
        return tensors

    def report(self) -> None:
        """Say the warnings (skipped images) not said yet."""
        self._flush()

    def batch(self, indices: list[int], rng: random.Random) -> Batch:
        batch = make_batch(self.data, indices, rng, pixels=self.latents is None, substitute=True)
        self._flush()
        return batch

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, prompt embeddings, pooled embeddings) for a batch."""
        if self.latents is None:
            parameters = encode_finite(self.models, batch.pixels, self.say, "a batch")
        else:
            entries = [self._latent_entry(key) for key in batch.keys]
            parameters = torch.stack([p for p, _ in entries]).to(self.models.device, non_blocking=True)
            if self.masks is not None:  # the masks cached with the latents
                batch.mask = torch.stack([m for _, m in entries if m is not None])
        if self.text is None:
            captions = self.captions(batch.captions) if self.captions else batch.captions
            states, pooled = (text_states if self.text_grad else encode_text)(self.models, captions)
        else:
            device = self.models.device
            texts = [self._text_entry(c) for c in batch.captions]
            states = torch.stack([s for s, _ in texts]).to(device, non_blocking=True)
            pooled = torch.stack([p for _, p in texts]).to(device, non_blocking=True)
        if self.disk is not None:
            self._flush()  # entries found damaged on read
        dtype = self.models.weight_dtype
        return sample_latents(self.models, parameters), states.to(dtype), pooled.to(dtype)


@dataclass
class CacheReport:
    latents: Counts
    text: Counts
    warnings: list[str]

    def lines(self) -> list[str]:
        return [f"latent cache: {self.latents}", f"text-encoder cache: {self.text}", *self.warnings]


def precompute(plan: dict[str, Any]) -> CacheReport:
    """Fill the disk caches the plan asks for (`sdxlc cache`): load the model and data, encode, report."""
    from runtime.model.load import setup_model
    from runtime.train.data import setup_data

    loaded = setup_model(plan)
    data = setup_data(plan)
    conditioning = Conditioning(loaded, data, plan["data"]["cache"])
    return CacheReport(conditioning.latent_counts, conditioning.text_counts, list(data.warnings))


def used_keys(plan: dict[str, Any]) -> set[str]:
    """Every disk-cache key the plan's run reads or writes (`sdxlc cache --prune` keeps these)."""
    from runtime.model.load import setup_model
    from runtime.train.data import setup_data

    models, data, cache = setup_model(plan), setup_data(plan), plan["data"]["cache"]
    keys: set[str] = set()
    if cache["latents"]:
        vae, dtype = vae_identity(models)
        for sample in {s.image: s for s in reversed(data.samples)}.values():
            item = data.images[sample.image]
            for flip in (False, True) if data.datasets[item.dataset]["flip"] else (False,):
                masked = mask_identity(item) if data.masks else ""
                keys.add(latent_key(item.sha256, sample.bucket, sample.crop, flip, vae, dtype, masked))
    if cache["text_encoder"]:
        identity = text_identity(models.pipe)
        keys.update(text_key(caption, *identity) for caption in all_captions(data))
    return keys


def text_identity(pipe: Any) -> tuple[str, str]:
    """What a text entry's key depends on besides its caption: both tokenizers and both encoders."""
    tokenizers = tokenizer_fingerprint(pipe.tokenizer) + tokenizer_fingerprint(pipe.tokenizer_2)
    encoders = fingerprint(pipe.text_encoder, pipe.text_encoder.config) + fingerprint(
        pipe.text_encoder_2, pipe.text_encoder_2.config)
    return tokenizers, encoders


def vae_identity(models: Models) -> tuple[str, str]:
    """What a latent's key depends on besides the image and its crop: the VAE and its dtype."""
    return fingerprint(models.pipe.vae, models.pipe.vae.config), str(models.vae_dtype).removeprefix("torch.")
