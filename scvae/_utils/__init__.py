"""Ground floor: atomic file writes, the device and its seeded random state, torch.distributed."""
