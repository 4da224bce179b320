"""Merging checkpoints: the plan (from headers), the methods (per tensor), the streaming engine."""
