"""Generation: images from a base model with LoRAs and embeddings (`sdxlc gen`), and the samples a
run renders while it trains.

May import `runtime.model`, `runtime.methods`, `runtime.formats` and `sdxlc.plan`.
"""
