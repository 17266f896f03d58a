"""Federated learning on Flower's Message API: FedAvg on non-IID partitions, secure aggregation."""
