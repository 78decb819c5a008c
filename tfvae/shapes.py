"""Shapes: procedural 32×32 images with known, independent generative factors.

A small offline stand-in for dSprites (which cannot be downloaded here): every
image shows one white shape on a black canvas, fixed by five discrete factors,

| factor | values | what it sets |
| --- | --- | --- |
| `shape` | 3 | square, ellipse (axes 2:1), equilateral triangle |
| `scale` | 4 | circumradius 4.5, 5.5, 6.5, 7.5 pixels |
| `rotation` | 6 | 0°, 15°, …, 75° counter-clockwise |
| `x` | 17 | centre at 8, 9, …, 24 pixels from the left edge |
| `y` | 17 | centre at 8, 9, …, 24 pixels from the top edge |

so the full product set (`all_factors`) holds 3·4·6·17·17 = 20,808 distinct
images, and in it the factors are exactly independent; `sample_factors` draws
each factor independently and uniformly instead.

Design choices:

* **32×32×1**: a quarter of the pixels of dSprites' 64×64, so that a VAE
  trains in minutes on 2 CPU cores, while a shape of circumradius 4 to 7
  pixels still shows its rotation.
* **Rotations in [0°, 90°)**: the square repeats every 90°, the triangle every
  120° and the ellipse every 180°, so within a quarter turn every rotation value
  gives a different image for every shape (dSprites' full turn does not). The
  radii are half-integers because at a radius of 4 pixels the binary square
  turned by 15° and by 75° (mirror images) fall on the same pixels; with these
  radii any two rotations of a sprite differ in at least 4 pixels.
* **Integer translations**: each (shape, scale, rotation) sprite is rendered
  once on a 16×16 patch centred at (8, 8) and pasted at an integer offset, so
  moving one step in `x` or `y` moves the image by exactly one pixel.
* **Pixels**: each pixel's coverage is estimated from 8×8 sub-pixel samples;
  `antialias=False` (the default, binary like dSprites, so a Bernoulli
  likelihood is an exact likelihood) sets a pixel when at least half of it is
  covered, `antialias=True` keeps the grey coverage in [0, 1].

Everything is vectorised numpy: the product set renders in well under a second.
"""

import itertools

import numpy as np

from tfvae import _checks

__all__ = [
    "all_factors",
    "ANGLES",
    "CANVAS",
    "CENTRES",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "FACTOR_VALUES",
    "generate",
    "PATCH",
    "RADII",
    "render",
    "sample_factors",
    "SHAPES",
    "sprites",
    "SUBSAMPLES",
    "UNIT_AREAS",
]

CANVAS = 32
SHAPES = ("square", "ellipse", "triangle")
FACTOR_NAMES = ("shape", "scale", "rotation", "x", "y")
# Sprites are drawn on PATCH×PATCH tiles centred at (PATCH/2, PATCH/2).
PATCH = 16
SUBSAMPLES = 8
# The physical value of each factor's levels: circumradius (pixels), angle
# (degrees, counter-clockwise), centre (pixels from the left / top edge).
RADII = np.array([4.5, 5.5, 6.5, 7.5])
ANGLES = np.arange(6) * 15.0
CENTRES = PATCH / 2 + np.arange(CANVAS - PATCH + 1, dtype="float64")
FACTOR_VALUES = {
    "shape": np.arange(len(SHAPES)),
    "scale": RADII,
    "rotation": ANGLES,
    "x": CENTRES,
    "y": CENTRES,
}
FACTOR_SIZES = tuple(len(FACTOR_VALUES[name]) for name in FACTOR_NAMES)
# Area of each shape with circumradius 1 (a square of half-diagonal 1, an
# ellipse of semi-axes 1 and 1/2, an equilateral triangle inscribed in the unit
# circle): the area at radius r is r² times this.
UNIT_AREAS = {"square": 2.0, "ellipse": np.pi / 2, "triangle": 3 * np.sqrt(3) / 4}


def all_factors():
    """The full product set of factor values, in row-major (C) order.

    Returns:
      int64 `[20808, 5]`: one row per combination of `FACTOR_SIZES`, columns in
      the order of `FACTOR_NAMES`. Every combination appears exactly once, so
      the factors are exactly independent and uniform over these rows.
    """
    return np.array(list(itertools.product(*(range(s) for s in FACTOR_SIZES))), dtype="int64")


def sample_factors(num_examples, seed=0):
    """`num_examples` factor rows, each factor drawn independently and uniformly.

    Args:
      num_examples: rows to draw.
      seed: seed of the draw (numpy's `default_rng`). Default value: `0`.

    Returns:
      int64 `[num_examples, 5]`, columns in the order of `FACTOR_NAMES`.
    """
    num_examples = _checks.positive_int("num_examples", num_examples)
    rng = np.random.default_rng(_checks.non_negative_int("seed", seed))
    return np.stack([rng.integers(0, size, num_examples) for size in FACTOR_SIZES],
                    axis=1).astype("int64")


def _inside(shape, u, v):
    """Whether points (u, v) of the shape's own frame (circumradius 1) are inside."""
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 1 / np.sqrt(2)
    if shape == "ellipse":
        return u ** 2 + (2 * v) ** 2 <= 1
    # Equilateral triangle with a vertex at angle 90°: three half-planes whose
    # outward normals point at -90°, 30° and 150°, each at the inradius 1/2.
    normals = np.deg2rad([-90.0, 30.0, 150.0])
    return np.all([np.cos(a) * u + np.sin(a) * v <= 0.5 for a in normals], axis=0)


def sprites(antialias=False):
    """Every (shape, scale, rotation) sprite on a `PATCH`×`PATCH` tile.

    Args:
      antialias: keep each pixel's covered fraction (grey) rather than
        thresholding it at one half (binary). Default value: `False`.

    Returns:
      float32 `[3, 4, 6, PATCH, PATCH]`, centred at (PATCH/2, PATCH/2).
    """
    # Sub-pixel sample points, y pointing up, relative to the tile's centre.
    offsets = (np.arange(PATCH * SUBSAMPLES) + 0.5) / SUBSAMPLES - PATCH / 2
    dx, dy = offsets[None, :], -offsets[:, None]
    tiles = np.empty((len(SHAPES), len(RADII), len(ANGLES), PATCH, PATCH), "float32")
    for (i, shape), (j, radius), (k, angle) in itertools.product(
            enumerate(SHAPES), enumerate(RADII), enumerate(np.deg2rad(ANGLES))):
        # Rotate the sample points by -angle into the shape's frame.
        u = (np.cos(angle) * dx + np.sin(angle) * dy) / radius
        v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radius
        covered = _inside(shape, u, v).reshape(PATCH, SUBSAMPLES, PATCH, SUBSAMPLES)
        tiles[i, j, k] = covered.mean(axis=(1, 3))
    return tiles if antialias else (tiles >= 0.5).astype("float32")


def _check_factors(factors):
    factors = np.asarray(factors)
    if (factors.ndim != 2 or factors.shape[1] != len(FACTOR_NAMES)
            or not np.issubdtype(factors.dtype, np.integer)):
        raise ValueError(
            f"Received an invalid value for `factors`, expected an integer array [n, "
            f"{len(FACTOR_NAMES)}] (columns {', '.join(FACTOR_NAMES)}). Received: factors of "
            f"dtype {factors.dtype} and shape {factors.shape}")
    bad = (factors < 0) | (factors >= np.array(FACTOR_SIZES))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"Received an invalid value for `factors`: factor {FACTOR_NAMES[column]!r} takes "
            f"values 0..{FACTOR_SIZES[column] - 1}. Received: factors[{row}, {column}]="
            f"{factors[row, column]}")
    return factors


def render(factors, antialias=False):
    """The images of rows of factor values.

    Args:
      factors: integer `[n, 5]`, columns in the order of `FACTOR_NAMES`, each
        in `0 .. FACTOR_SIZES[k] - 1`.
      antialias: grey pixels (covered fraction) rather than binary ones.
        Default value: `False`.

    Returns:
      float32 `[n, 32, 32, 1]` in [0, 1]; the shape is centred at pixel
      coordinates `(CENTRES[x], CENTRES[y])` (pixel i spans [i, i + 1)).
    """
    factors = _check_factors(factors)
    tiles = sprites(antialias)
    n = len(factors)
    images = np.zeros((n, CANVAS, CANVAS), "float32")
    # The tile of each row, pasted with its top-left corner at pixel (y, x).
    rows = factors[:, 4][:, None, None] + np.arange(PATCH)[None, :, None]
    cols = factors[:, 3][:, None, None] + np.arange(PATCH)[None, None, :]
    images[np.arange(n)[:, None, None], rows, cols] = tiles[
        factors[:, 0], factors[:, 1], factors[:, 2]]
    return images[..., None]


def generate(num_examples=None, seed=0, antialias=False):
    """Images with their factors: the full product set, or an independent sample.

    Args:
      num_examples: `None` for the full product set (`all_factors`, in order),
        or the number of rows to draw with `sample_factors`. Default value: `None`.
      seed: seed of the draw (unused for the product set). Default value: `0`.
      antialias: grey rather than binary pixels (see `render`). Default value: `False`.

    Returns:
      A dict: `x` float32 `[n, 32, 32, 1]`, `factors` int64 `[n, 5]`,
      `names` (`FACTOR_NAMES`) and `sizes` (`FACTOR_SIZES`).
    """
    factors = all_factors() if num_examples is None else sample_factors(num_examples, seed)
    return {"x": render(factors, antialias), "factors": factors, "names": FACTOR_NAMES,
            "sizes": FACTOR_SIZES}
