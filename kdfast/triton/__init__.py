"""Triton kernels (one op family per file). Imported lazily: triton is optional."""
