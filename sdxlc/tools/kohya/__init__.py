"""kohya-ss/sd-scripts configs to recipes and back: `sdxlc import kohya` and `sdxlc export kohya`.

`read` turns kohya's files (dataset TOML, training TOML, kohya_ss GUI JSON, a saved command line) into
one table of sd-scripts settings; `mapping` and `data` turn that table into recipe statements, with a
note for every setting sdxlc has no word for; `write` renders the recipe; `export` writes kohya's files
from a compiled plan. May import the language and the pipeline of sdxlc; never torch.
"""
