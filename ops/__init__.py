"""Operating the system: local multi-node Ray clusters and comparing W&B runs."""
