"""The error a training run stops with (kept light: the `vae` command catches it for every subcommand)."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to try."""
