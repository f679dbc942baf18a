"""Child-process entry points that the run worker launches (no Django imports here)."""
