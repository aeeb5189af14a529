"""Everything a run writes into its directory, and reading it back: the layout, atomic
writes, the lock, checkpoints, run.json, metrics.csv, the log, env.json, curves.png and
TensorBoard extras."""
