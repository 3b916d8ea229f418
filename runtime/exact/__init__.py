"""The fake-tensor simulator behind `sdxlc plan --exact`: one training step and the sampling pass
measured with full-size shapes and no real memory.

May import `runtime.model`, `runtime.methods`, `runtime.train` and `sdxlc.plan`.
"""
