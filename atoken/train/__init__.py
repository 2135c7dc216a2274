"""Training: data sources, batching, the trainer and checkpoints (sits on top of core and plugins)."""
