"""profiler: a torch.profiler trace of a few optimizer steps, for TensorBoard's profiler."""

from __future__ import annotations

from dataclasses import dataclass

from toolbox.callbacks import Callback, CallbackConfig, register_callback


@register_callback("profiler")
@dataclass(frozen=True)
class Profiler(CallbackConfig):
    """Trace optimizer steps start-step+1 .. start-step+steps with torch.profiler into
    <run>/profiler/ (open with TensorBoard's profiler plugin, or chrome://tracing)."""

    start_step: int = 5
    """Optimizer steps left untraced first (warm-up: allocations, compilation)."""
    steps: int = 5
    """Optimizer steps traced."""
    record_shapes: bool = False
    """Also record the input shapes of each operator."""
    profile_memory: bool = False
    """Also record tensor memory allocations."""
    with_stack: bool = False
    """Also record the Python stack of each operator (slower, larger traces)."""

    def problems(self) -> list[str]:
        found = self.not_positive("steps")
        if self.start_step < 0:
            found.append(f"{self.option('start_step')} is {self.start_step}; give 0 or more.")
        return found

    def build(self) -> Callback:
        return StepProfiler(self)


TRACES = "profiler"
"""The run directory's folder of traces: TensorBoard's profiler plugin reads
<logdir>/<run>/plugins/profile, and ``tensorboard --logdir <run>/profiler`` shows these."""


class StepProfiler(Callback):
    """A torch.profiler session over the whole fit, whose schedule records optimizer steps
    start-step+1 .. start-step+steps (the one before them warms the profiler up) and writes
    one trace when they are done, or when fit() ends inside them."""

    def __init__(self, options: Profiler) -> None:
        self.options = options
        self.profiler = None
        self.traced = False
        """A trace was written: a resumed run does not trace again."""

    def on_fit_start(self, trainer) -> None:
        import torch

        options, done = self.options, trainer.state.progress.step
        last = options.start_step + options.steps
        if self.traced or done >= last:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        warmup = 1 if options.start_step > 0 else 0
        window = torch.profiler.schedule(
            skip_first=options.start_step - warmup,
            wait=0,
            warmup=warmup,
            active=options.steps,
            repeat=1,
        )
        traces = trainer.run_dir / TRACES
        write_trace = torch.profiler.tensorboard_trace_handler(str(traces))
        first = max(options.start_step, done) + 1  # the first optimizer step traced

        def trace_ready(profiler) -> None:
            write_trace(profiler)
            self.traced = True
            trace = max(traces.glob("*.pt.trace.json"), key=lambda path: path.stat().st_mtime)
            traced_to = trainer.state.progress.step  # the window's end, or fit()'s
            trainer.logger.info(
                "profiler: optimizer steps %d-%d traced (ProfilerStep#%d-#%d) to %s; see "
                "it with: tensorboard --logdir %s (or open it in ui.perfetto.dev)",
                first,
                traced_to,
                first - done - 1,
                traced_to - done - 1,
                trace,
                traces,
            )

        # The profiler counts from this session's first step: ProfilerStep#k is optimizer
        # step done + 1 + k, and a run resumed inside the window traces the rest of it.
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=lambda k: window(done + k),
            on_trace_ready=trace_ready,
            record_shapes=options.record_shapes,
            profile_memory=options.profile_memory,
            with_stack=options.with_stack,
        )
        self.profiler.start()

    def on_step_end(self, trainer, step: int) -> None:
        if self.profiler is not None:
            self.profiler.step()
            if self.traced:  # the later steps run without the profiler's step markers
                self.profiler.stop()
                self.profiler = None

    def on_fit_end(self, trainer, status, reason, error) -> None:
        # Inside the window, stopping writes the steps traced so far (any status: a failed
        # run's trace is often the one wanted).
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
            if not self.traced:
                trainer.logger.info(
                    "profiler: the run ended after optimizer step %d, before step %d of the "
                    "trace (--callback.profiler.start-step %d): nothing traced",
                    trainer.state.progress.step,
                    self.options.start_step + 1,
                    self.options.start_step,
                )

    def state_dict(self) -> dict:
        return {"traced": self.traced}

    def load_state_dict(self, state: dict) -> None:
        self.traced = state["traced"]
