"""Training: the config, the loop and its callbacks, run folders, checkpoints, resume, compare."""
