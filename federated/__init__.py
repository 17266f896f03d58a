"""Federated learning on Flower's Message API: FedAvg on non-IID partitions, secure aggregation.

Secure aggregation for any Message-API app is two names, imported lazily so that
``import federated.task`` does not load the strategy machinery::

    from federated import SecureAggregation, secure_agg_mod
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "secure_agg_mod": "federated.secure_mod",
    "make_secure_agg_mod": "federated.secure_mod",
    "SecureAggregation": "federated.secure_aggregation",
    "SecAggParams": "federated.secure_aggregation",
    "SecureFedAvg": "federated.secure_fedavg",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'federated' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
