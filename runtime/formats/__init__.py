"""File formats other tools read: SAI/LDM (kohya) UNet names, single-file SDXL checkpoints.

Pure conversions and file I/O over tensors; imports no other runtime package, and of the compiler
side only `sdxlc.plan` (atomic writes).
"""
