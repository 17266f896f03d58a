"""Capabilities an agent can hold (the kinds of :mod:`envs.api`), and the mechanisms behind them.

Data (``MapReducer``, ``Searcher``), training (``Communicator``, ``ParameterStore``), inference
(``Generator``) and cluster coordination (``Scheduler``); each experiment kind builds agents
with them and calls them by kind.
"""
