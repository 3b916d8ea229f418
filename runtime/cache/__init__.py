"""Content-addressed caches on disk: VAE latents and text-encoder outputs, their keys and entries.
What to encode (and `sdxlc cache`'s work) is decided in `runtime.train.conditioning`.

May import `runtime.model` and `sdxlc.plan`; nothing of `runtime.train`.
"""
