"""The base model: loading (hub id, diffusers folder, single file, built-in tiny), placement, dtypes.

May import `runtime.formats` and `sdxlc.plan`; nothing of `runtime.train`.
"""
