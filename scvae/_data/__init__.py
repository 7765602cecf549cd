"""Stage 1, AnnData -> counts: read and check the user's data (numpy, scipy, h5py; never torch)."""
