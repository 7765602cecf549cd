"""Stage 4, inference: the training loop over any minibatch source, checkpoints, the heap."""
