"""Content-addressed caches on disk: VAE latents and text-encoder outputs, their keys, and the
`sdxlc cache` command's work.

May import `runtime.model` and `sdxlc.plan`; nothing of `runtime.train`.
"""
