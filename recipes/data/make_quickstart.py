"""Draw the quickstart dataset: small images of simple coloured shapes, each with a .txt caption.

Deterministic: the same seed always draws the same images. Run from anywhere:
    python recipes/data/make_quickstart.py [--out recipes/data/quickstart] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (235, 205, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ((64, 64), (96, 64), (64, 96), (80, 80), (96, 64), (64, 96),
         (96, 96), (90, 60), (60, 90), (72, 72), (96, 64), (64, 96))  # square, 3:2 landscape, 2:3 portrait


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple,
               outline: int = 0) -> None:
    """A filled shape in `box`, or only its outline `outline` pixels wide when `outline` is set."""
    left, top, right, bottom = box
    paint = {"outline": colour, "width": outline} if outline else {"fill": colour}
    if shape == "circle":
        draw.ellipse(box, **paint)
    elif shape == "square":
        draw.rectangle(box, **paint)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], **paint)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_image(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    shape_name, background_name = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    colour_name = rng.choice([c for c in sorted(COLOURS) if c != background_name])
    width, height = size
    image = Image.new("RGB", size, COLOURS[background_name])
    side = rng.randint(min(size) * 2 // 5, min(size) * 3 // 4)
    left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    draw_shape(ImageDraw.Draw(image), shape_name, (left, top, left + side, top + side), COLOURS[colour_name])
    shape = f"{article(colour_name)} {colour_name} {shape_name}"
    return image, f"{shape} on {article(background_name)} {background_name} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "quickstart")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for index, size in enumerate(SIZES):
        image, caption = make_image(rng, size)
        stem = args.out / f"{index:02d}"
        image.save(stem.with_suffix(".png"), optimize=False)
        stem.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    print(f"wrote {len(SIZES)} images to {args.out}")


if __name__ == "__main__":
    main()
