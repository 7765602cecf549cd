"""Stage 2, counts -> minibatches: the sources a fit trains on (torch; never AnnData)."""
