"""pyinit: a Python /init for a Linux initramfs that provisions bare metal.

This package is the runtime only: everything here is frozen into /init.
It never imports the host-side packages (pyinit_build, pyinit_server, pyinit_qemu).
"""

__version__ = "0.1.0"
