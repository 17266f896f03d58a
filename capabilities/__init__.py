"""Capabilities an agent can hold: data, training, inference and cluster coordination."""
