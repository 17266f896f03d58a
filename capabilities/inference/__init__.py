"""Inference: a paged KV cache with a tiny decoder (:class:`tiny_decoder.CachedGenerator`, an agent's
``Generator``), and mixture-of-experts routing, one process or expert-parallel (layers, not capabilities)."""
