"""The plan: the contract between the compiler and the runtime.

Canonical JSON, the plan hash and its check against `schema/plan.schema.json`, the sample manifest,
bucket geometry and batch order, the output and checkpoint layout, atomic file writes, and the pure
semantic plan diff. This is the only part of sdxlc the runtime imports, so it stays small and pure: it
imports nothing else of sdxlc, no lark, and jsonschema only to describe the errors of a document that
the compiled check (`quick_valid`) does not pass.
"""
