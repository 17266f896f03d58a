"""Data capabilities: the MapReduce shuffle and the retrieve-then-rank funnel."""
