"""tfvae.shapes: procedural images whose factors are independent and do what they claim.

Each factor is checked against an independent computation on the pixels: centroids
for the position, closed-form areas for the shape and scale, second moments for the
rotation, and exact counting or chi-square tests for independence.
"""

import itertools

import numpy as np
import pytest
from scipy import stats

from tfvae import shapes

from helpers import invalid
from helpers import raises

NAMES = shapes.FACTOR_NAMES
SIZES = shapes.FACTOR_SIZES


def _factors(shape=0, scale=3, rotation=0, x=8, y=8):
    return np.array([[shape, scale, rotation, x, y]])


def _centroid(image):
    """(x, y) of the pixel mass, in pixel coordinates (pixel i spans [i, i + 1))."""
    image = image[..., 0]
    centres = np.arange(image.shape[0]) + 0.5
    mass = image.sum()
    return (image.sum(0) @ centres) / mass, (image.sum(1) @ centres) / mass


def _orientation(image):
    """The angle (degrees, counter-clockwise, in [0, 180)) of the image's principal axis."""
    image = image[..., 0]
    rows, cols = np.indices(image.shape) + 0.5
    x, y = cols, -rows  # y pointing up
    mass = image.sum()
    mx, my = (image * x).sum() / mass, (image * y).sum() / mass
    cxx = (image * (x - mx) ** 2).sum()
    cyy = (image * (y - my) ** 2).sum()
    cxy = (image * (x - mx) * (y - my)).sum()
    return np.rad2deg(0.5 * np.arctan2(2 * cxy, cxx - cyy)) % 180


def _area_and_tolerance(name, radius):
    """The ideal area of a shape of circumradius `radius`, and how far the sub-pixel
    estimate can be from it: a sample point is misclassified only within half a sample
    spacing of the boundary, so the error is at most perimeter × spacing / 2."""
    a, b = radius, radius / 2  # the ellipse's semi-axes; Ramanujan's perimeter
    perimeter = {"square": 4 * np.sqrt(2) * radius, "triangle": 3 * np.sqrt(3) * radius,
                 "ellipse": np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))}[name]
    return shapes.UNIT_AREAS[name] * radius ** 2, perimeter / (2 * shapes.SUBSAMPLES)


def test_the_factor_table_is_as_documented():
    assert NAMES == ("shape", "scale", "rotation", "x", "y")
    assert SIZES == (3, 4, 6, 17, 17)
    # Every position keeps the 16×16 tile inside the 32×32 canvas.
    assert shapes.CENTRES.min() - shapes.PATCH / 2 == 0
    assert shapes.CENTRES.max() + shapes.PATCH / 2 == shapes.CANVAS
    # Every sprite fits its tile: the circumscribed circle of the largest one does.
    assert shapes.RADII.max() <= shapes.PATCH / 2


def test_sampling_is_deterministic_from_the_seed():
    first = shapes.generate(500, seed=3)
    again = shapes.generate(500, seed=3)
    np.testing.assert_array_equal(first["factors"], again["factors"])
    np.testing.assert_array_equal(first["x"], again["x"])
    assert not np.array_equal(shapes.sample_factors(500, seed=4), first["factors"])
    assert first["x"].shape == (500, 32, 32, 1) and first["x"].dtype == np.float32
    assert first["factors"].shape == (500, 5) and first["factors"].dtype == np.int64
    assert first["names"] == NAMES and first["sizes"] == SIZES


def test_the_product_set_holds_every_combination_once():
    factors = shapes.all_factors()
    assert factors.shape == (int(np.prod(SIZES)), 5) == (20808, 5)
    expected = np.array(list(itertools.product(*map(range, SIZES))))
    np.testing.assert_array_equal(np.unique(factors, axis=0), expected)
    # Hence exact independence: every pairwise table is the product of its marginals.
    n = len(factors)
    for i, j in itertools.combinations(range(5), 2):
        table = np.zeros((SIZES[i], SIZES[j]))
        np.add.at(table, (factors[:, i], factors[:, j]), 1)
        np.testing.assert_array_equal(table, np.full_like(table, n / (SIZES[i] * SIZES[j])))


def _pairwise_p_values(factors):
    p_values = []
    for i, j in itertools.combinations(range(factors.shape[1]), 2):
        table = np.zeros((factors[:, i].max() + 1, factors[:, j].max() + 1))
        np.add.at(table, (factors[:, i], factors[:, j]), 1)
        p_values.append(stats.chi2_contingency(table).pvalue)
    return np.array(p_values)


def test_sampled_factors_are_uniform_and_pairwise_independent():
    factors = shapes.sample_factors(20_000, seed=0)
    # Marginals: a chi-square goodness-of-fit test against the uniform distribution.
    # With 5 + 10 tests at level 1e-4 a correct generator fails with probability < 2e-3
    # (and, the seed being fixed, it either always passes or always fails).
    for k, size in enumerate(SIZES):
        counts = np.bincount(factors[:, k], minlength=size)
        assert len(counts) == size
        assert stats.chisquare(counts).pvalue > 1e-4, NAMES[k]
    assert np.all(_pairwise_p_values(factors) > 1e-4)
    # The test has power: a sample where y copies x (x and y the same factor) fails it.
    dependent = factors.copy()
    dependent[:, 4] = dependent[:, 3]
    assert _pairwise_p_values(dependent)[-1] < 1e-10


def test_pixels_are_binary_by_default_and_grey_with_antialiasing():
    factors = shapes.sample_factors(200, seed=1)
    binary = shapes.render(factors)
    grey = shapes.render(factors, antialias=True)
    assert set(np.unique(binary)) == {0.0, 1.0}
    assert grey.min() == 0.0 and grey.max() == 1.0
    assert np.any((grey > 0) & (grey < 1))
    # The binary pixel is the grey coverage thresholded at one half.
    np.testing.assert_array_equal(binary, (grey >= 0.5).astype("float32"))


@pytest.mark.parametrize("axis", ["x", "y"])
def test_a_position_step_moves_the_shape_by_one_pixel(axis):
    k = NAMES.index(axis)
    for shape, scale, rotation in itertools.product(range(3), range(4), (0, 2, 5)):
        factors = np.repeat(_factors(shape, scale, rotation), SIZES[k], axis=0)
        factors[:, k] = np.arange(SIZES[k])
        images = shapes.render(factors)
        centroids = np.array([_centroid(image) for image in images])[:, 0 if axis == "x" else 1]
        others = np.array([_centroid(image) for image in images])[:, 1 if axis == "x" else 0]
        # An exact translation: each step adds one pixel along the axis and nothing across.
        np.testing.assert_allclose(np.diff(centroids), 1.0, atol=1e-9)
        np.testing.assert_allclose(others, others[0], atol=1e-9)
        # The mass sits where the factor says the centre is: exactly for the point-symmetric
        # square and ellipse, within half a pixel for the pixelated triangle.
        atol = 0.5 if shapes.SHAPES[shape] == "triangle" else 1e-9
        np.testing.assert_allclose(centroids, shapes.CENTRES, atol=atol)


def test_shape_and_scale_set_the_area_as_the_closed_form_says():
    grey = shapes.sprites(antialias=True)
    binary = shapes.sprites()
    for i, name in enumerate(shapes.SHAPES):
        for j, radius in enumerate(shapes.RADII):
            # Areas of the ideal shapes, at every rotation (rotation keeps the area).
            expected, atol = _area_and_tolerance(name, radius)
            np.testing.assert_allclose(grey[i, j].sum(axis=(-1, -2)), expected, atol=atol)
        # Scale grows the binary area strictly, at every rotation.
        areas = binary[i].sum(axis=(-1, -2))  # [scale, rotation]
        assert np.all(np.diff(areas, axis=0) > 0), name
    # The three shapes differ in area at the same radius (2 : pi/2 : 3 sqrt(3)/4).
    areas = grey[:, 3, 0].sum(axis=(-1, -2))
    assert areas[0] > areas[1] > areas[2]


def test_rotation_turns_the_shape():
    # (That it keeps the area is checked against the closed form above.)
    # Every rotation gives a different binary image, for every shape and scale: any two
    # differ in at least 4 pixels (mirror images included: 15° and 75° for the square).
    binary = shapes.sprites()
    for i, j in itertools.product(range(3), range(4)):
        for k, m in itertools.combinations(range(len(shapes.ANGLES)), 2):
            assert np.abs(binary[i, j, k] - binary[i, j, m]).sum() >= 4, (i, j, k, m)
    # The ellipse's long axis points at the factor's angle (counter-clockwise).
    ellipse = shapes.SHAPES.index("ellipse")
    for k, angle in enumerate(shapes.ANGLES):
        image = shapes.render(_factors(ellipse, 3, k), antialias=True)[0]
        assert abs(_orientation(image) - angle) < 1.0, (angle, _orientation(image))


def test_the_square_and_triangle_turn_counter_clockwise():
    # A square turned by 45° is a diamond: its top row of pixels is narrow, not full.
    square = shapes.sprites()[0, 3]
    top = lambda tile: tile[np.argmax(tile.sum(1) > 0)].sum()  # noqa: E731
    assert top(square[0]) > 5 and top(square[3]) <= 2
    # The triangle starts with a vertex up, so its top half holds less than its bottom
    # half; at 30° counter-clockwise a vertex points right (0°) and the edge opposite
    # it is on the left, so its left half holds more than its right half.
    tile = shapes.sprites(antialias=True)[2, 3]
    half = shapes.PATCH // 2
    assert tile[0][:half].sum() < tile[0][half:].sum()
    assert tile[2][:, :half].sum() > tile[2][:, half:].sum()
    # Turned clockwise instead (-30°), a vertex would point left: the flip shows it.
    assert tile[2][:, ::-1][:, :half].sum() < tile[2][:, ::-1][:, half:].sum()


@pytest.mark.parametrize("factors", [
    np.zeros((3, 4), "int64"),
    np.zeros((3, 5), "float32"),
    np.zeros(5, "int64"),
])
def test_render_refuses_factors_of_the_wrong_shape_or_type(factors):
    with raises("`factors`", f"shape {factors.shape}", "[n, 5]"):
        shapes.render(factors)


@pytest.mark.parametrize("column, value", [(0, 3), (3, 17), (4, -1), (2, 6)])
def test_render_refuses_factor_values_out_of_range(column, value):
    factors = np.zeros((4, 5), "int64")
    factors[2, column] = value
    with raises("`factors`", repr(NAMES[column]), f"factors[2, {column}]={value}"):
        shapes.render(factors)


@pytest.mark.parametrize("num_examples", [0, -3, 2.5, None, "64", True])
def test_sample_factors_refuses_a_bad_count(num_examples):
    with invalid("num_examples", num_examples):
        shapes.sample_factors(num_examples)
