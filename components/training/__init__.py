"""Step 2, training: the epoch loop, checkpoints, and where it runs (one process, torchrun, a TrainJob)."""
