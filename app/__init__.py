"""fisher-merge: Fisher-weighted averaging of transformers checkpoints held in object storage."""

__version__ = "0.1.0"
