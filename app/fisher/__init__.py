"""Diagonal Fisher information of transformers checkpoints: data, per-example gradients, cache."""
