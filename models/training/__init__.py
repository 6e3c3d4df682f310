"""Training of the default generator: data sampling, networks used only for training, losses, loop, export."""
