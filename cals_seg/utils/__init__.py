"""Helpers of the adapters and tools: atomic writes, the saved-logits layout,
dataset checks, command-line and launcher helpers, checkpoint loading."""
