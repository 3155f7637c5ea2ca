"""Helpers around HuggingFace models (capturing internals for intermediate-layer losses)."""
