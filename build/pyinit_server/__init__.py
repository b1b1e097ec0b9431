"""The provisioning server: per-MAC actions (BOOTy JSON), images with Range, events."""

from pyinit_server.server import ProvisioningServer, normalize_mac

__all__ = ["ProvisioningServer", "normalize_mac"]
