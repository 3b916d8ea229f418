"""Draw the quickstart's dataset: shapes drawn as outlines, captioned "… in sks outline style".

The base model the quickstart starts from (models/tiny-shapes) only ever saw filled shapes, so a LoRA
trained on these images visibly learns something new. Deterministic: the same seed always draws the
same images. Run from anywhere:
    python recipes/data/make_outlines.py [--out recipes/data/outlines] [--seed 3]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from make_quickstart import COLOURS, SHAPES, article, draw_shape
from PIL import Image, ImageDraw

SIZE = 64
COUNT = 16
STYLE = "in sks outline style"
FIRST = ("circle", "red", "blue")  # the quickstart's sample prompt is one of the training captions


def make_image(rng: random.Random, shape: str, colour: str, background: str) -> tuple[Image.Image, str]:
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    side = rng.randint(SIZE * 9 // 20, SIZE * 7 // 10)
    left = (SIZE - side) // 2 + rng.randint(-SIZE // 10, SIZE // 10)
    top = (SIZE - side) // 2 + rng.randint(-SIZE // 10, SIZE // 10)
    draw_shape(ImageDraw.Draw(image), shape, (left, top, left + side, top + side), COLOURS[colour], outline=4)
    caption = f"{article(colour)} {colour} {shape} on {article(background)} {background} background {STYLE}"
    return image, caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "outlines")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for index in range(COUNT):
        if index == 0:
            shape, colour, background = FIRST
        else:
            shape, background = SHAPES[index % len(SHAPES)], rng.choice(sorted(COLOURS))
            colour = rng.choice([c for c in sorted(COLOURS) if c != background])
        image, caption = make_image(rng, shape, colour, background)
        stem = args.out / f"{index:02d}"
        image.save(stem.with_suffix(".png"), optimize=False)
        stem.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    print(f"wrote {COUNT} images to {args.out}")


if __name__ == "__main__":
    main()
