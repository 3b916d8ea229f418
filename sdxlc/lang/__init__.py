"""The recipe language: grammar, parser, typed syntax tree, lowering to the recipe document, the
vocabulary table, `use` layers and defaults, language versions, the formatter and the diagnostics catalog.

Pure Python (lark and the standard library). Imports nothing else of sdxlc but `sdxlc.plan.schemas`
and `sdxlc.plan.files` (the statement cache's atomic writes).
"""
