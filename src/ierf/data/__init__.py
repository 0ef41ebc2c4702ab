"""Data: image loading and the synthetic ground-truth benchmark."""
