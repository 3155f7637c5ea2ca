"""Plain-PyTorch definitions of every kdfast kernel: the spec each backend is tested against."""
