"""Validation of a lowered recipe: the structural JSON Schemas and the named semantic checks.

Collects every problem as diagnostics and changes nothing. May import `sdxlc.lang`, `sdxlc.plan` and
`sdxlc.resolve` (for the tables the checks consult); never torch.
"""
