"""Synthetic corpus for L2P: prompt lists from the paper's taxonomy, and images from the source latent model."""
