"""The run machinery: one run (train), the trainer group, devices, launches, sweeps, callbacks, console, loggers."""
