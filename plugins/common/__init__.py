"""Code that several built-in methods share (not a method itself): the diffusion autoencoder."""
