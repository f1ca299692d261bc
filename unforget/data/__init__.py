"""Data: split loading and fingerprints, batch loaders, text tokenisation, Fashion-MNIST reader."""
