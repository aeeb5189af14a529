"""Trajectory utilities against values worked out by hand, and the generated trajectories."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from toolbox.datasets import DATASETS
from toolbox.datasets.trajectories import Trajectories
from toolbox.tasks.trajectory import (
    EARTH_RADIUS_M,
    centre,
    crop_or_pad,
    flip_west_east,
    haversine,
    interpolate,
    js_divergence,
    plot_trajectories,
    rotate,
    total_distance,
    unzscore,
    valid_points,
    zscore,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DEGREE_M = math.pi * EARTH_RADIUS_M / 180  # one degree of a great circle, in metres
NAN = float("nan")


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def local_points(offsets_m, lon0: float, lat0: float) -> torch.Tensor:
    """(lon, lat) of points ``offsets_m`` metres (east, north) of (lon0, lat0)."""
    offsets = tensor(offsets_m)
    lon = lon0 + offsets[:, 0] / (DEGREE_M * math.cos(math.radians(lat0)))
    lat = lat0 + offsets[:, 1] / DEGREE_M
    return torch.stack([lon, lat], -1)


def valid_mask(batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mask (B, L) of the valid points of a padded batch."""
    return torch.arange(batch.shape[1]) < lengths[:, None]


def sides(triangle: torch.Tensor) -> torch.Tensor:
    """The three side lengths (metres) of a (3, 2) triangle."""
    return haversine(triangle, triangle.roll(-1, 0))


# --- Distances -------------------------------------------------------------------------------


def test_haversine_matches_degrees_of_great_circles():
    assert haversine(tensor([7.0, 50.0]), tensor([7.0, 51.0])) == pytest.approx(DEGREE_M)
    assert haversine(tensor([0.0, 0.0]), tensor([-1.0, 0.0])) == pytest.approx(DEGREE_M)
    assert haversine(tensor([0.0, 0.0]), tensor([180.0, 0.0])) == pytest.approx(
        math.pi * EARTH_RADIUS_M
    )
    # At latitude 60 a small step east is half as long as the same step on the equator.
    east = haversine(tensor([10.0, 60.0]), tensor([10.001, 60.0]))
    assert east == pytest.approx(0.001 * DEGREE_M / 2, rel=1e-6)
    # Broadcast over leading dimensions; a point is 0 m from itself.
    points = tensor([[[0.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    assert torch.allclose(haversine(points, tensor([0.0, 0.0])), tensor([[0.0, 2 * DEGREE_M]]))


def test_total_distance_sums_valid_steps_and_ignores_padding():
    meridian = tensor([[3.0, 10.0], [3.0, 10.5], [3.0, 11.0], [3.0, 11.5]])
    assert total_distance(meridian) == pytest.approx(1.5 * DEGREE_M)
    padded = torch.stack([meridian, tensor([[3.0, 10.0], [3.0, 12.0], [NAN, NAN], [99, 9]])])
    distances = total_distance(padded, torch.tensor([4, 2]))
    assert distances.shape == (2,)
    assert distances.tolist() == pytest.approx([1.5 * DEGREE_M, 2 * DEGREE_M])
    assert total_distance(padded, torch.tensor([1, 1])).tolist() == [0.0, 0.0]


# --- Cropping and padding --------------------------------------------------------------------


def test_crop_keeps_the_first_points_and_pad_repeats_the_last_valid_one():
    batch = tensor([[[0, 0], [1, 1], [2, 2], [3, 3]], [[5, 5], [6, 6], [NAN, NAN], [9, 9]]])
    cropped, lengths = crop_or_pad(batch, 3, torch.tensor([4, 2]))
    assert lengths.tolist() == [3, 2]
    assert cropped.tolist() == [[[0, 0], [1, 1], [2, 2]], [[5, 5], [6, 6], [6, 6]]]

    padded, lengths = crop_or_pad(batch, 5, torch.tensor([4, 2]))
    assert lengths.tolist() == [4, 2]
    assert padded[0].tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [3, 3]]
    assert padded[1].tolist() == [[5, 5], [6, 6], [6, 6], [6, 6], [6, 6]]

    single, length = crop_or_pad(tensor([[1, 2], [3, 4]]), 3)
    assert single.tolist() == [[1, 2], [3, 4], [3, 4]] and length.item() == 2


# --- Point-wise transforms -------------------------------------------------------------------


def test_flip_mirrors_longitudes_about_the_mean_of_valid_points():
    batch = tensor([[[0, 40], [1, 41], [5, 42], [100, 0]]])
    flipped = flip_west_east(batch, torch.tensor([3]))
    # Mean longitude of the valid points is 2, so 0, 1, 5 become 4, 3, -1.
    assert flipped[0, :3].tolist() == [[4, 40], [3, 41], [-1, 42]]
    assert flip_west_east(flipped, torch.tensor([3]))[0, :3].tolist() == batch[0, :3].tolist()
    assert flip_west_east(batch[0, :3]).tolist() == flipped[0, :3].tolist()


def test_centre_subtracts_the_mean_of_valid_points():
    batch = tensor([[[1, 10], [3, 14], [NAN, NAN]], [[0, 0], [2, 0], [4, 3]]])
    centred, means = centre(batch, torch.tensor([2, 3]))
    assert means.tolist() == [[2, 12], [2, 1]]
    assert centred[0, :2].tolist() == [[-1, -2], [1, 2]]
    assert centred[1].tolist() == [[-2, -1], [0, -1], [2, 2]]
    single, mean = centre(batch[1])
    assert mean.tolist() == [2, 1] and single.tolist() == centred[1].tolist()


def test_zscore_uses_valid_points_and_unzscore_inverts_it():
    batch = tensor([[[1, 10], [3, 10], [50, 50]], [[2, 10], [2, 10], [2, 10]]])
    lengths = torch.tensor([2, 3])
    normalised, mean, std = zscore(batch, lengths=lengths)
    # Valid longitudes 1, 3, 2, 2, 2: mean 2, variance (1 + 1) / 5. Latitudes have no
    # spread, so their std is 1 rather than 0.
    assert mean.tolist() == [2, 10]
    assert std.tolist() == pytest.approx([math.sqrt(0.4), 1])
    assert normalised[0, :2, 0].tolist() == pytest.approx([-1 / math.sqrt(0.4), 1 / math.sqrt(0.4)])
    assert normalised[..., 1][valid_mask(batch, lengths)].tolist() == [0] * 5
    assert torch.allclose(unzscore(normalised, mean, std), batch)

    # Given statistics are used as they are, e.g. the training set's on other data.
    again, same_mean, same_std = zscore(tensor([[4, 12]]), mean, std)
    assert same_mean is mean and same_std is std
    assert again[0].tolist() == pytest.approx([2 / math.sqrt(0.4), 2])


def test_valid_points_drops_the_padding():
    batch = tensor([[[1, 2], [3, 4]], [[5, 6], [NAN, NAN]]])
    assert valid_points(batch, torch.tensor([2, 1])).tolist() == [[1, 2], [3, 4], [5, 6]]


# --- Rotation --------------------------------------------------------------------------------


def test_rotating_a_quarter_turn_swaps_east_for_north_at_latitude_60():
    # 1 km west and east of (10, 60); a degree of longitude there is half a degree of arc.
    offset = 1000 / DEGREE_M
    line = tensor([[10 - 2 * offset, 60], [10 + 2 * offset, 60]])
    rotated = rotate(line, math.pi / 2)
    # Anticlockwise: west goes south, east goes north, 1 km each.
    expected = tensor([[10, 60 - offset], [10, 60 + offset]])
    assert torch.allclose(rotated, expected, atol=1e-12)


def test_rotation_keeps_a_3_4_5_triangle_and_two_half_turns_undo():
    triangle = local_points([[0, 0], [300, 0], [300, 400]], lon0=116.4, lat0=60.0)
    assert sides(triangle).tolist() == pytest.approx([300, 400, 500], rel=1e-3)
    rotated = rotate(triangle, 0.7)
    assert not torch.allclose(rotated, triangle)
    assert sides(rotated).tolist() == pytest.approx([300, 400, 500], rel=1e-3)
    assert torch.allclose(rotate(rotate(triangle, math.pi), math.pi), triangle, atol=1e-12)


def test_rotation_takes_an_angle_per_trajectory_and_its_centre_from_valid_points():
    triangle = local_points([[0, 0], [300, 0], [300, 400]], lon0=-3.7, lat0=40.4)
    padded = torch.cat([triangle, tensor([[170.0, -80.0]])])  # the far point is padding
    batch = torch.stack([padded, padded])
    rotated = rotate(batch, tensor([0.0, 1.0]), lengths=torch.tensor([3, 3]))
    assert torch.allclose(rotated[0, :3], triangle, atol=1e-12)
    assert torch.allclose(rotated[1, :3], rotate(triangle, 1.0), atol=1e-12)


# --- Resampling ------------------------------------------------------------------------------


def test_interpolate_spaces_points_evenly_along_a_straight_line():
    # On the equator arc length is proportional to longitude.
    line = tensor([[0, 0], [0.5, 0], [3, 0]])
    assert torch.allclose(interpolate(line, 4), tensor([[0, 0], [1, 0], [2, 0], [3, 0]]))
    # Along a bent path: 1 degree north then 2 east, 3 degrees in all.
    bent = tensor([[0, 0], [0, 1], [2, 1]])
    resampled = interpolate(bent, 4)
    assert torch.allclose(resampled, tensor([[0, 0], [0, 1], [1, 1], [2, 1]]), atol=1e-3)
    assert torch.equal(resampled[0], bent[0]) and torch.equal(resampled[-1], bent[-1])


def test_interpolate_ignores_padding_and_repeated_points():
    line = tensor([[0, 0], [1, 0], [1, 0], [2, 0], [NAN, NAN], [50, 50]])
    batch = torch.stack([line, line])
    resampled = interpolate(batch, 5, torch.tensor([4, 1]))
    assert resampled.shape == (2, 5, 2)
    assert torch.allclose(resampled[0], tensor([[0, 0], [0.5, 0], [1, 0], [1.5, 0], [2, 0]]))
    assert resampled[1].tolist() == [[0, 0]] * 5  # one point has nowhere to go


# --- Jensen-Shannon divergence ---------------------------------------------------------------


def test_js_divergence_of_identical_and_disjoint_sets():
    points = tensor([[0.1, 0.1], [0.9, 0.2], [0.5, 0.7]])
    assert js_divergence(points, points.flip(0)).item() == 0.0
    far = points + 10
    assert js_divergence(points, far, bins=4).item() == pytest.approx(math.log(2))


def test_js_divergence_matches_a_hand_computed_pair_of_histograms():
    bounds = ((0.0, 2.0), (0.0, 2.0))  # 2 x 2 cells of 1 degree
    a = tensor([[0.5, 0.5], [1.5, 0.5]])  # half in each of two cells
    b = tensor([[0.2, 0.2], [0.8, 0.4], [5.0, 5.0]])  # the point at (5, 5) is out of bounds
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4).
    kl_pm = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qm = math.log(1 / 0.75)
    divergence = js_divergence(a, b, bins=2, bounds=bounds)
    assert divergence.item() == pytest.approx((kl_pm + kl_qm) / 2)
    assert 0 < divergence.item() < math.log(2)


# --- Plotting --------------------------------------------------------------------------------


def test_plot_draws_the_valid_points_of_each_trajectory_and_marks_starts():
    batch = tensor([[[116.3, 39.9], [116.4, 39.95], [116.5, 40.0]], [[1, 2], [3, 4], [NAN, NAN]]])
    figure, ax = plt.subplots()
    try:
        assert plot_trajectories(ax, batch, torch.tensor([3, 2]), linewidth=2) is ax
        assert len(ax.lines) == 2
        assert ax.lines[0].get_xydata().tolist() == batch[0].tolist()
        assert ax.lines[1].get_xydata().tolist() == [[1, 2], [3, 4]]
        assert ax.lines[0].get_linewidth() == 2
        (starts,) = ax.collections
        assert starts.get_offsets().tolist() == [[116.3, 39.9], [1, 2]]
    finally:
        plt.close(figure)


# --- The generated dataset -------------------------------------------------------------------

SMALL = dict(num_train=40, num_test=10, min_length=5, max_length=20)


def test_trajectories_are_registered_as_a_regression_dataset():
    assert DATASETS.get("trajectories") is Trajectories
    assert Trajectories().task == "regression"
    assert Trajectories().problems() == []


def test_same_seed_same_trajectories():
    first, second = Trajectories(**SMALL).build(), Trajectories(**SMALL).build()
    other = Trajectories(**SMALL, seed=1).build()
    for name in ("train", "val", "test"):
        for key in ("input", "length", "target"):
            assert torch.equal(first.split(name)[key], second.split(name)[key])
    assert not torch.equal(first.train["input"], other.train["input"])


def test_split_sizes_shapes_and_info():
    splits = Trajectories(**SMALL, val_fraction=0.25).build()
    sizes = [len(splits.split(name)["input"]) for name in ("train", "val", "test")]
    assert sizes == [30, 10, 10]
    for name in ("train", "val", "test"):
        split = splits.split(name)
        assert split["input"].dtype == torch.float32 and split["input"].shape[1:] == (20, 2)
        assert split["length"].dtype == torch.int64
        assert torch.equal(split["target"], split["input"])
    info = splits.info
    assert (info.task, info.input_shape, info.num_outputs) == ("regression", (20, 2), 2)
    assert (info.mean, info.std) == ((0.0,), (1.0,))


def test_lengths_padding_speeds_and_start_area_are_as_configured():
    config = Trajectories(
        **SMALL, min_speed=2.0, max_speed=6.0, sample_interval=5.0, start_radius=1000.0
    )
    splits = config.build()
    tracks = torch.cat([splits.train["input"], splits.val["input"], splits.test["input"]])
    lengths = torch.cat([splits.train["length"], splits.val["length"], splits.test["length"]])
    assert lengths.min() >= 5 and lengths.max() <= 20 and len(set(lengths.tolist())) > 1
    last = tracks[torch.arange(len(tracks)), lengths - 1]  # (N, 2)
    padding = ~valid_mask(tracks, lengths)
    assert torch.equal(tracks[padding], last[:, None].expand_as(tracks)[padding])

    # Every step covers speed x 5 s, give or take float32's metre of rounding in degrees.
    steps = haversine(tracks[:, :-1].double(), tracks[:, 1:].double())
    valid_steps = steps[valid_mask(tracks, lengths)[:, 1:]]
    assert valid_steps.min() > 2.0 * 5 - 2 and valid_steps.max() < 6.0 * 5 + 2
    centre_point = tensor([config.centre_lon, config.centre_lat])
    assert haversine(tracks[:, 0].double(), centre_point).max() < 1000 + 2


BAD_DATASET_VALUES = [
    ("num_train", 0),
    ("num_test", -1),
    ("min_length", 1),
    ("max_length", 4),  # below min_length 5
    ("sample_interval", 0.0),
    ("min_speed", -1.0),
    ("min_speed", 20.0),  # above max_speed
    ("max_speed", 0.0),
    ("turn_std", -5.0),
    ("centre_lon", 200.0),
    ("centre_lat", 85.0),
    ("start_radius", -1.0),
    ("augment", "crop"),
]


@pytest.mark.parametrize(("field", "value"), BAD_DATASET_VALUES)
def test_bad_dataset_value_gets_a_message_naming_the_option_and_value(field, value):
    others = {"min_length": 5} if field == "max_length" else {}
    if field == "max_speed":
        others = {"min_speed": 0.0}
    found = Trajectories(**{field: value, **others}).problems()
    assert len(found) == 1, found
    assert f"--data.{field.replace('_', '-')} is {value}" in found[0]
