"""Cluster coordination capabilities: gang scheduling (simulated) and Ray placement groups."""
