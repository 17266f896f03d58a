"""Bonawitz-style double-masking secure aggregation with real cryptography (no Flower imports)."""
