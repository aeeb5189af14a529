"""The maths of particular tasks, shared by their datasets and models (e.g. trajectories)."""
