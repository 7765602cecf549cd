"""Stage 6, ``scvae.fit``: the settings, the fit, what it writes into the AnnData."""
