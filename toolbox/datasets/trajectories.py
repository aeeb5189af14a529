from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.datasets import DatasetConfig, DatasetInfo, DatasetSplits, Task, register_dataset


@register_dataset("trajectories")
@dataclass(frozen=True)
class Trajectories(DatasetConfig):
    """Generated GPS tracks around a city: float32 (max_length, 2) (lon, lat) in degrees,
    padded past ``length`` with copies of the last point; ``target`` is ``input``."""

    num_train: int = 2048
    """Number of training trajectories (before --data.val-fraction is held out)."""
    num_test: int = 512
    """Number of test trajectories."""
    min_length: int = 16
    """Fewest points in a trajectory (at least 2)."""
    max_length: int = 64
    """Most points in a trajectory; every sample is padded to this many points."""
    sample_interval: float = 10.0
    """Time between consecutive points, in seconds."""
    min_speed: float = 1.0
    """Slowest speed, in m/s (1 m/s: a slow walk)."""
    max_speed: float = 15.0
    """Fastest speed, in m/s (15 m/s = 54 km/h: city traffic)."""
    turn_std: float = 15.0
    """Standard deviation of the change of heading from one point to the next, in degrees."""
    centre_lon: float = 116.397
    """Longitude of the city centre, in degrees (Beijing's, as in GeoLife and T-Drive)."""
    centre_lat: float = 39.908
    """Latitude of the city centre, in degrees, within [-80, 80]."""
    start_radius: float = 5000.0
    """Trajectories start uniformly within this distance of the centre, in metres."""
    seed: int = 0
    """Seed of the generator that makes the trajectories."""

    @property
    def task(self) -> Task:
        return "regression"

    def problems(self) -> list[str]:
        found = super().problems()
        sizes = self.not_positive("num_train", "num_test")
        if not self.min_length >= 2:
            sizes.append(
                f"--data.min-length is {self.min_length}; a trajectory needs at least 2 "
                "points, e.g. --data.min-length 16."
            )
        if not self.max_length >= self.min_length:
            sizes.append(
                f"--data.max-length is {self.max_length}, below --data.min-length "
                f"{self.min_length}; raise --data.max-length to at least {self.min_length}."
            )
        if sizes:
            found += sizes
        else:  # valid sizes: what build() allocates is known
            # build() keeps per trajectory its float32 points twice (input and target) and
            # an int64 length; its float64 working copies come on top.
            found += self.memory_problems(
                f"--data.num-train {self.num_train}, --data.num-test {self.num_test} and "
                f"--data.max-length {self.max_length}",
                fixed_bytes=0,
                sample_bytes=2 * self.max_length * 2 * 4 + 8,
                samples=self.num_train + self.num_test,
            )
        for name, example in (("sample_interval", "10 (seconds)"), ("max_speed", "15 (m/s)")):
            if not 0 < getattr(self, name) < math.inf:  # also catches nan
                found.append(
                    f"{self.option(name)} is {getattr(self, name)}; it must be positive and "
                    f"finite, e.g. {example}."
                )
        if not 0 <= self.min_speed <= self.max_speed:
            found.append(
                f"--data.min-speed is {self.min_speed}; it must be in [0, --data.max-speed "
                f"{self.max_speed}], e.g. --data.min-speed 1.0."
            )
        if not 0 <= self.turn_std < math.inf:
            found.append(
                f"--data.turn-std is {self.turn_std}; it must be finite and >= 0 (degrees)."
            )
        if not -180 <= self.centre_lon <= 180:
            found.append(
                f"--data.centre-lon is {self.centre_lon}; give a longitude in [-180, 180]."
            )
        if not -80 <= self.centre_lat <= 80:
            found.append(
                f"--data.centre-lat is {self.centre_lat}; give a latitude in [-80, 80] (the "
                "local flat-Earth conversion to degrees breaks down near the poles)."
            )
        if not 0 <= self.start_radius < math.inf:
            found.append(
                f"--data.start-radius is {self.start_radius}; it must be finite and >= 0 (metres)."
            )
        if self.augment != "none":
            found.append(
                f"--data.augment is {self.augment}; its crops and flips are for images, so use "
                "--data.augment none (toolbox.tasks.trajectory has augmentations for trajectories)."
            )
        return found + self.not_seed("seed")

    def build(self) -> DatasetSplits:
        import torch

        from toolbox.data.splits import hold_out
        from toolbox.tasks.trajectory import EARTH_RADIUS_M, crop_or_pad

        generator = torch.Generator().manual_seed(self.seed)

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, dtype=torch.float64)

        count, steps = self.num_train + self.num_test, self.max_length - 1
        lengths = torch.randint(self.min_length, self.max_length + 1, (count,), generator=generator)
        # Start points uniform over a disc: the square root spreads them evenly by area.
        radius = self.start_radius * uniform(count).sqrt()
        bearing = 2 * math.pi * uniform(count)
        start = torch.stack([radius * bearing.sin(), radius * bearing.cos()], -1)  # (N, 2) m
        # Heading (clockwise from north) drifts by a random turn at every point.
        turns = math.radians(self.turn_std) * torch.randn(
            count, steps, generator=generator, dtype=torch.float64
        )
        heading = 2 * math.pi * uniform(count, 1) + turns.cumsum(1)  # (N, steps)
        # Each track has its own cruising speed, varied by 10% from step to step.
        cruise = self.min_speed + (self.max_speed - self.min_speed) * uniform(count, 1)
        jitter = 1 + 0.1 * torch.randn(count, steps, generator=generator, dtype=torch.float64)
        speed = (cruise * jitter).clamp(self.min_speed, self.max_speed)
        step = speed * self.sample_interval  # (N, steps) metres
        moves = torch.stack([step * heading.sin(), step * heading.cos()], -1)
        # (N, max_length, 2) metres east and north of the centre.
        offsets = torch.cat([start[:, None], start[:, None] + moves.cumsum(1)], dim=1)
        # Local equirectangular frame: a degree east is cos(latitude) shorter than one north.
        degrees_per_metre = 180 / (math.pi * EARTH_RADIUS_M)
        lon = self.centre_lon + offsets[..., 0] * degrees_per_metre / math.cos(
            math.radians(self.centre_lat)
        )
        lat = self.centre_lat + offsets[..., 1] * degrees_per_metre
        tracks, _ = crop_or_pad(torch.stack([lon, lat], -1).float(), self.max_length, lengths)

        # The target repeats the input: a model that recovers masked points hides them from
        # its own copy of the input in its training step.
        samples = {"input": tracks, "length": lengths, "target": tracks.clone()}
        train = {key: value[: self.num_train] for key, value in samples.items()}
        test = {key: value[self.num_train :] for key, value in samples.items()}
        train, val = hold_out(train, self.val_fraction, self.split_seed)
        info = DatasetInfo(
            task="regression",
            input_shape=(self.max_length, 2),
            num_outputs=2,
            # Identity normalisation: the loader's per-channel statistics act on dimension 1
            # of a batch (B, L, 2), which is time here, not (lon, lat), and would count the
            # padding. Models z-score the valid points themselves (toolbox.tasks.trajectory.zscore).
            mean=(0.0,),
            std=(1.0,),
        )
        return DatasetSplits(info, train, val, test)
