"""The training loop and what it is built from: the trainer (the loop), its built parts
(build), checkpointed state (state), recorder and sinks (recorder), stop controller
(stopping), events, the step contract's adapter and runner (steps), the loss window between
host syncs (window), evaluation, the weight average, distribution over processes, the device
and precision (runtime), the progress display, stop signals, and test.py's evaluation."""
