"""Training for trainable interventions: fit loops, metrics, probes and sweeps."""
