"""Training and evaluation engine: trainer, evaluator, checkpoints, schedules and logging."""
