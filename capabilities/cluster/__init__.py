"""Cluster coordination: gang scheduling (simulated; :class:`gang.GangScheduler` is an agent's
``Scheduler``) and Ray placement groups."""
