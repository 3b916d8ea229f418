"""Memory and time: the analytic estimate of a resolved plan, the memory levers, and the fit solver.

May import `sdxlc.lang`, `sdxlc.plan` and `sdxlc.resolve`; never torch (`plan --exact` lives in
`runtime.exact`).
"""
