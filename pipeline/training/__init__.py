"""Pieces of the `train` stage: training examples, losses and regularizers, checkpoints."""
