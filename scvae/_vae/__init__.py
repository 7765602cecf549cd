"""Stage 3, the Pyro model and guide, the count distributions and the training objective."""
