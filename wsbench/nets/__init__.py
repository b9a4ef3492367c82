"""Neural building blocks shared by several plugins (classifier, diffusion autoencoder)."""
