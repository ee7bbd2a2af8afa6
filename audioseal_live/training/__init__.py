"""Training: corpus building, attacks, losses and the training loop."""
