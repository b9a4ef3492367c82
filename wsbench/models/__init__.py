"""What learned methods share: the model store, the torch device parser, training helpers."""
