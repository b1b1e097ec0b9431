"""The provisioning server: per-MAC actions (BOOTy JSON), images with Range, events."""
