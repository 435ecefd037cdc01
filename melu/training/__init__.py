"""Meta-training: the outer-loop trainer, the epoch loop, episodes, checkpoints, data parallel."""
