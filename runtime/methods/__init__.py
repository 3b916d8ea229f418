"""Training methods behind one protocol (`runtime.methods.base.Method`): what becomes trainable,
its optimizer groups, what is saved. One module per method; the registry maps the plan's
`method.kind` to its class, so adding a method adds a module, not a branch.

May import `runtime.model`, `runtime.formats` and `sdxlc.plan`; nothing of `runtime.train`.
"""
