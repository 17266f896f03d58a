"""Data capabilities: the MapReduce shuffle (:class:`shuffle.MapReduce`, a ``MapReducer``) and the
retrieve-then-rank funnel (:class:`funnel.RetrieveThenRank`, a ``Searcher``)."""
