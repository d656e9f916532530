"""Training: the `PretrainingTrainer`, the setup that attaches data and callbacks to it, its callbacks, throughput
and MFU, and the launch checks for distributed runs."""
