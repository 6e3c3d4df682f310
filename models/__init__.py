"""Networks, training, checkpoint import and export for the lip-sync service (needs torch)."""
