"""Inference capabilities: a paged KV cache with a tiny decoder, and mixture-of-experts routing."""
