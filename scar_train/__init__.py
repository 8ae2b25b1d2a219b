"""SCAR-Net training (PyTorch). Reuses scar_runtime's I/O, preprocessing, labels and metrics so
training and inference cannot drift apart."""
