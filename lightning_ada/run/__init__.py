"""The run layer: guards, run folder, checkpoint I/O and schedule checks, below the loop."""
