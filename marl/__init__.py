"""Centralized training with decentralized execution: MAPPO with a central critic, IPPO by a flag."""
