"""Resolution: defaults, the hardware profile, the data on disk (scan, index, balance, buckets,
the sample manifest), the model source, the optimizer table, the method and the launch arithmetic.

Turns a checked recipe document into a plan without its estimate. May import `sdxlc.lang` and
`sdxlc.plan`; never torch.
"""
