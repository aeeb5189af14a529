"""The training loop and what it is built from: the trainer, its state and stopping, steps,
evaluation, the weight average, distribution over processes, the device and precision, the
progress display, stop signals, and test.py's evaluation."""
