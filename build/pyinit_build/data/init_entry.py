"""PyInstaller entry point of the frozen /init. Kept trivial: all logic lives in pyinit.init."""

from pyinit.init import main

main()
