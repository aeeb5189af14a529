"""Batching the in-memory splits: on the device, or through a torch DataLoader."""
