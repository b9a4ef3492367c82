"""The diffusion autoencoder of ``ad`` and ``hideseek``: network, training, quality report, latent
probe, difference candidates and the base class of the methods built on it."""
