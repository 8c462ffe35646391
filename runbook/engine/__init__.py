"""The step engine: steps, their output, host-side commands."""
