"""Checkpoints in Hugging Face layout: the safetensors format, a streaming reader and writer."""
