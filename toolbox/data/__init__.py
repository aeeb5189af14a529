"""The data path: splitting the in-memory datasets and batching them, on the device or through
a torch DataLoader."""
