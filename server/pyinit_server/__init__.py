"""The provisioning server: per-MAC actions (BOOTy JSON), iPXE, images with Range, events."""

from pyinit_server.machines import normalize_mac
from pyinit_server.server import ProvisioningServer

__all__ = ["ProvisioningServer", "normalize_mac"]
