"""Stage 5, the fitted model as a user holds it: SCVAE, its folder on disk, its reference."""
