"""Tools that work on finished artifacts: `sdxlc lora resize`, `sdxlc lora merge`, `sdxlc lora extract`."""
