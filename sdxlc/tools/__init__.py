"""Tools over plans and the language: `explain` texts and the resume verdict.

May import any other stage of sdxlc; never torch.
"""
