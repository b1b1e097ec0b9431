"""Which disk to write, without udev: what the machine has, what uses it, root device hints,
and the choice.

Real servers have several disks whose kernel names (``sda``, ``nvme0n1``) change between boots,
so a machine's configuration names the disk by what it *is* (serial, WWN, model, size, the slot
it sits in) rather than by the name it got this time. The modules, in the order the boot's
``disks`` step (:func:`pyinit.init.step_disks`) uses them:

:mod:`pyinit.disks.settle`
    Drivers probe asynchronously: wait, bounded, until ``/sys/block`` stops changing.
:mod:`pyinit.disks.inventory`
    One :class:`~pyinit.disks.inventory.Disk` per whole disk, read from sysfs, and the
    ``/dev/disk/by-id`` and ``by-path`` names udev would give it.
:mod:`pyinit.disks.usage`
    What mounts, swaps on or holds a block device and its partitions, and a device's kernel
    name: asked by the inventory, the image writer and a capture alike.
:mod:`pyinit.disks.hints`
    ironic's ``rootDeviceHints``, parsed and matched against a disk.
:mod:`pyinit.disks.selection`
    The action's disk (a path, a stable name, hints or the default rule), or one line saying
    why no disk fits.
:mod:`pyinit.disks.report`
    The inventory as a console table and as the ``disks`` event.

Everything is pure except the readers of sysfs, /proc and /dev: :func:`~.inventory.inventory`,
:func:`~.inventory.make_links`, :func:`~.settle.settle`, :func:`~.usage.read_family`,
:func:`~.usage.kernel_name` and :func:`~.usage.device_usage`.
"""
