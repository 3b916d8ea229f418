"""Training: execute a sealed plan (setup_model → setup_data → train → finish): the sample manifest
to batches, their conditioning (latents and text embeddings, cached), the step, the objective,
optimizers and schedules, progress, logs and training-state checkpoints.

May import `runtime.model`, `runtime.methods`, `runtime.cache`, `runtime.gen`, `runtime.formats` and,
from the compiler side, only `sdxlc.plan`.
"""
