"""PID 1: the boot as a short, ordered table of named steps.

Each step is ``def step(ctx) -> None`` and returns early when it does not apply. The runner logs
``[3/13] network: start`` then ``ok (2.1 s)`` or ``FAILED: <one line>`` and emits one
``PYINIT-EVENT`` line per transition. The last step, ``handoff``, reports the result, says what
happens now (``handoff now how=kexec``) and does it; it returns only by failing. One guard around
everything catches every error, reports it, and applies the failure policy
(``pyinit.on_failure=shell|reboot|poweroff``). PID 1 never exits.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from pyinit import __version__, coldplug, kmod, log, macaddr, policy, proc, rootfs, tls
from pyinit.cmdline import BootParams, IpConfig, failure_policy, mask_secrets, parse_cmdline
from pyinit.errors import ConfigError, PyinitError
from pyinit.events import ServerSink
from pyinit.fetch import fetch_action, same_origin, server_base
from pyinit.network.configure import StaticIP, configure
from pyinit.network.links import list_nics, nic_inventory_event, nic_inventory_lines
from pyinit.network.result import NetworkResult

# What only the steps after the action fetch use is imported by those steps, when they run
# and only once they apply (ginit boots none of the provisioning modules): every module
# imported here is paid for before the first step, and under emulation that is a tenth of a
# second or more per module (bench_boot; docs/initramfs.md "Boot time").
if TYPE_CHECKING:
    from pyinit import erase, grow, lldp, raid, unique
    from pyinit.action import Action
    from pyinit.disks.inventory import Disk
    from pyinit.image.write import WriteRequest

MODULES_LIST = Path("/etc/pyinit/modules")
MODULES_ROOT = Path("/lib/modules")
DEVICE_TIMEOUT = 30.0  # seconds for the action's disk to appear (drivers probe asynchronously)
NEWROOT = Path("/newroot")
TARGET = Path("/run/pyinit/target")  # the written disk's root while configuring / inspecting it
SYSFS, DEV = Path("/sys"), Path("/dev")  # where step_disks reads and links (tests: a fake tree)
DISK_QUIET = 1.0  # seconds /sys/block must stay unchanged before the inventory is taken
BIND_WAIT = 2.0  # seconds a matched driver gets to bind (async probe) before "no driver"
# pci: aliases of the kernel's modules left out of this initramfs (written by the builder):
# read only to tell "the kernel has a driver, this initramfs does not"
KERNEL_ALIASES = Path("/etc/pyinit/kernel-aliases")
PROCFS = Path("/proc")  # where the hardware inventory reads cpuinfo and meminfo
LLDP_SECONDS = 60.0  # how long the LLDP listener waits for a switch (frames every 30 s)
KEYRING = Path("/etc/pyinit/keyring.gpg")  # pyinit.keyring.BAKED; tests point it elsewhere
RUN_KEYRING = Path("/run/pyinit/keyring.gpg")  # where pyinit.keyring=base64:… is written
INVENTORY_GRACE = 5.0  # seconds the result waits for a hardware inventory still being taken


@dataclass
class Context:
    cmdline: str = ""
    params: BootParams = field(default_factory=BootParams)
    params_parsed: bool = False  # False: params are the defaults (the command line did not parse)
    network: NetworkResult | None = None
    action: Action | None = None
    session: requests.Session = field(default_factory=requests.Session)
    sink: ServerSink | None = None
    summary: dict[str, object] = field(default_factory=dict)
    early_events: list[log.Event] = field(default_factory=list)  # replayed to the server sink
    entrypoint_rc: int | None = None
    grown: grow.GrowResult | None = None
    target_root: str | None = None  # the written system's root device, once found
    # The prepared boot (kexec loaded, switch_root or the entrypoint checked) and its kind: run
    # by the last step, the point of no return. Everything that can fail early happened before.
    boot: Callable[[], object] | None = None
    boot_kind: str | None = None
    inventory: list[Disk] = field(default_factory=list)  # the disks, once taken
    # The action's disk resolved to /dev/<kernel name> (hints, by-id link, default rule): what
    # provision, grow, configure and handoff use, never the action's own field.
    device: str | None = None
    erase_plan: erase.Plan | None = None  # the erase action's disks, chosen by step_disks
    raid_members: raid.Members | None = None  # a RAID1 root's disks, chosen by step_disks
    # /sys/block and the time once the drivers are loaded: the disks step's settle wait counts
    # its quiet period from here when nothing changed since
    block_baseline: tuple[tuple[str, ...], float] | None = None
    plugger: coldplug.Plugger | None = None  # the drivers this boot matched and loaded
    # every device's drivers but the NICs' (loaded by the modules step), then hotplug
    background_drivers: coldplug.Background | None = None
    # Background work started by step_action, stopped (bounded) before the result
    hardware: threading.Thread | None = None
    lldp_listener: lldp.Listener | None = None


# ---- steps -------------------------------------------------------------------------------


def step_rootfs(ctx: Context) -> None:
    """Mount the pseudo filesystems, make fallback device nodes, parse the command line."""
    rootfs.apply(rootfs.EARLY)
    ctx.cmdline = Path("/proc/cmdline").read_text().strip()
    ctx.params = parse_cmdline(ctx.cmdline, os.environ)
    ctx.params_parsed = True
    log.configure(debug=ctx.params.debug)
    if ctx.params.mode == "provision":  # every runtime request goes through this one session
        tls.configure(ctx.session, ctx.params)
    if ctx.params.mode == "none" and not ctx.params.break_before:
        raise ConfigError("cmdline", "nothing to do: give MYURL= or BOOTYURL= (provision), or "
                          "root= and entrypoint= (ginit)")
    log.get_logger().info(f"rootfs: mode {ctx.params.mode}, "
                          f"cmdline: {mask_secrets(ctx.cmdline)}")


def step_modules(ctx: Context) -> None:
    """Load the listed non-driver modules (filesystems, crc32c), then the drivers of the
    network controllers present (coldplug by modalias, in modules.dep order): DHCP needs those.
    Every other device's driver (storage: a real HBA's probe takes seconds) loads in the
    background meanwhile, then hotplug; the steps that need disks wait for it. A network
    controller left without a driver gets one line and an event here, a storage controller in
    the disks step."""
    base = MODULES_ROOT / os.uname().release
    if not (base / "modules.dep").exists():
        return
    # "@name": staged for on-demand loading (ginit loads a filesystem before mounting it).
    listed = [n.strip() for n in MODULES_LIST.read_text().splitlines()
              if n.strip() and not n.startswith(("#", "@"))] if MODULES_LIST.exists() else []
    alias_file = base / "modules.alias"
    table = kmod.parse_modules_alias(alias_file.read_text() if alias_file.exists() else "")
    if ctx.params.modules == "all":  # pyinit.modules=all: every listed driver, present or not
        loaded = kmod.load(listed, optional=frozenset(listed))
        ctx.summary["modules"] = len(loaded)
        log.get_logger().info(f"modules: loaded {len(loaded)}: {' '.join(loaded)}")
        return
    drivers = table.device_drivers()
    always = [n for n in listed if kmod.module_name(n) not in drivers]
    loaded = kmod.load(always, optional=frozenset(always))
    plugger = coldplug.Plugger(table, load=lambda names: kmod.load(names,
                                                                     optional=frozenset(names)))
    loaded += coldplug.coldplug(plugger, sysfs=SYSFS, scan=coldplug.network_modaliases)
    ctx.plugger = plugger
    ctx.background_drivers = coldplug.Background(plugger, sysfs=SYSFS).start()
    log.get_logger().info(f"modules: loaded {len(loaded)}: {' '.join(loaded)}; "
                          "other devices' drivers load in the background")
    report_unbound(ctx, "network controller")


def report_unbound(ctx: Context, kind: str) -> None:
    """One line and one event per PCI ``kind`` controller without a driver, after giving the
    matched ones a moment to bind (some probe asynchronously). Replayed to the server once
    its sink exists, like the inventories."""
    if ctx.plugger is None:
        return
    unbound = [d for d in coldplug.pci_devices(SYSFS, (kind,)) if not d.driver]
    if not unbound:
        return
    unbound = coldplug.wait_bound(unbound, SYSFS, timeout=BIND_WAIT)
    if all(d.driver for d in unbound):
        return
    try:
        kernel = kmod.parse_modules_alias(KERNEL_ALIASES.read_text())
    except OSError:
        kernel = None
    lines = coldplug.no_driver_lines(unbound, staged=ctx.plugger.aliases, kernel=kernel,
                                     loaded=ctx.plugger.loaded,
                                     firmware=coldplug.firmware_failures(
                                         coldplug.read_kernel_log()))
    for line, fields in lines:
        log.get_logger().warning(line)
        ev = log.event("modules", "no-driver", **fields)
        if ctx.sink is None:
            ctx.early_events.append(ev)
    ctx.summary.setdefault("no_driver", 0)
    ctx.summary["no_driver"] = int(str(ctx.summary["no_driver"])) + len(lines)


def step_network(ctx: Context) -> None:
    """DHCP (background thread, renewals keep running), the static ip= configuration, or IPv6
    (SLAAC, else DHCPv6) for ``ip=auto6|dhcp6`` or a server URL whose host is an IPv6 literal."""
    p = ctx.params
    ip = p.ip or IpConfig(mode="dhcp")
    if ip.mode == "off" or (p.ip is None and p.mode != "provision"):
        return  # ginit without ip= needs no network: do not wait for a lease
    static = None
    if ip.mode == "static":
        assert ip.address is not None and ip.prefixlen is not None
        static = StaticIP(address=ip.address, prefixlen=ip.prefixlen, gateway=ip.gateway,
                          dns=ip.dns, hostname=ip.hostname, device=ip.device)
    ctx.network = configure(bootif=p.bootif or None, static=static, device=ip.device,
                            vlans=p.vlans, bonds=p.bonds, ipv6=p.ipv6,
                            carrier_timeout=p.carrier_timeout, lease_timeout=p.dhcp_timeout)
    logger = log.get_logger()
    for line in nic_inventory_lines(ctx.network.nics):
        logger.info(f"network: {line}")
    # Console now; the server gets it too once step_action has its sink (it needs the MAC).
    ctx.early_events.append(log.event("network", "inventory",
                                      **nic_inventory_event(ctx.network.nics)))
    ctx.summary["mac"] = ctx.network.mac
    ctx.summary["interface"] = ctx.network.interface
    ctx.summary["address"] = f"{ctx.network.address}/{ctx.network.prefixlen}"


def step_action(ctx: Context) -> None:
    """Fetch this machine's action by MAC and validate it before any disk is touched. The
    server's event sink exists from here on, so the LLDP listener and the hardware inventory
    start here once the fetch is over, both in the background (:func:`start_lldp`,
    :func:`start_inventory`); switches send LLDP every 30 s, so nothing is missed."""
    if ctx.params.mode != "provision":
        return
    assert ctx.network is not None
    mac = ctx.network.mac
    ctx.sink = ServerSink(f"{server_base(ctx.params)}/events/{macaddr.dashes(mac)}",
                          token=ctx.params.token, session=ctx.session)
    log.add_sink(ctx.sink)
    for ev in ctx.early_events:  # emitted before the sink existed (the NIC inventory)
        ctx.sink(ev)
    try:
        fetched = fetch_action(ctx.params, mac, session=ctx.session)
    finally:  # after the fetch, never competing with it for the CPU; after a failed one too
        start_lldp(ctx)
        start_inventory(ctx)
    ctx.action = fetched.action
    ctx.summary["action_url"] = fetched.url
    ctx.summary["action"] = fetched.action.action
    # What the server's lifecycle moves on (docs/lifecycle.md): this machine starts a run of
    # this kind now.
    log.event("action", "fetched", action=fetched.action.action,
              dry_run=fetched.action.dry_run, action_sha256=fetched.sha256)
    log.get_logger().info(f"action: {fetched.action.summary()} (from {fetched.url})")


def start_lldp(ctx: Context) -> None:
    """The LLDP listener on every physical NIC (the down ones raised for its window): a daemon
    thread that mostly waits, posting each NIC's switch, port and VLAN (docs/inventory.md)."""
    from pyinit import lldp

    listen = list_nics(SYSFS)
    seconds = min(LLDP_SECONDS, ctx.params.lldp_seconds) if LLDP_SECONDS > 0 else 0
    if seconds > 0 and listen:
        ctx.lldp_listener = lldp.Listener([n.name for n in listen],
                                          down=[n.name for n in listen if not n.up],
                                          timeout=seconds).start()


def start_inventory(ctx: Context) -> None:
    """The hardware inventory (DMI, CPUs, memory, PCI, disks, NICs) in a daemon thread that
    posts one event. Never blocks and never fails the boot (docs/inventory.md)."""
    from pyinit import inventory
    from pyinit.disks.settle import settle

    nics = ctx.network.nics if ctx.network is not None else ()
    drivers, timeout = ctx.background_drivers, ctx.params.disk_timeout

    def wait() -> None:
        """Every driver loaded, then the disks settled as the disks step waits for them (a USB
        disk appears a second or more after its driver): the inventory lists what is there."""
        if drivers is not None:
            drivers.wait(timeout)
        settle(SYSFS, timeout=timeout, quiet=DISK_QUIET)

    ctx.hardware = inventory.start(sysfs=SYSFS, procfs=PROCFS, dev=DEV, nics=nics, wait=wait)


def stop_background(ctx: Context) -> None:
    """Before the result and the hand-off: the inventory gets a few seconds to finish (a boot
    that failed early, at an unknown MAC say, still tells the server what the machine is), the
    LLDP window ends (links it raised go down again)."""
    if ctx.hardware is not None:
        ctx.hardware.join(INVENTORY_GRACE)
        if ctx.hardware.is_alive():
            log.get_logger().warning(f"inventory: not taken within {INVENTORY_GRACE:.0f} s of "
                                     "the end; going on without it")
    if ctx.lldp_listener is not None:
        ctx.lldp_listener.stop()


def wait_for_drivers(ctx: Context) -> None:
    """Until the background coldplug has loaded every present device's driver (bounded by
    ``pyinit.disk_timeout``), then report storage controllers left without one."""
    if ctx.background_drivers is None:
        return
    from pyinit.disks.settle import block_names

    if not ctx.background_drivers.wait(ctx.params.disk_timeout):
        log.get_logger().warning(f"disks: drivers still loading after "
                                 f"{ctx.params.disk_timeout:.0f} s (pyinit.disk_timeout)")
    elif ctx.background_drivers.finished_at is not None:
        ctx.block_baseline = (block_names(SYSFS), ctx.background_drivers.finished_at)
    report_unbound(ctx, "storage controller")


def step_disks(ctx: Context) -> None:
    """Wait (bounded) for the disks to settle, show the inventory on the console and send it
    to the server, create /dev/disk/by-id and by-path, then choose the action's disk.

    After ``action`` on purpose: the server's event sink exists only then (an earlier
    inventory would reach the console only), DHCP has given slow drivers (USB) time to settle,
    and the choice needs the action. The choice is made here, not in provision, so a hint that
    matches nothing fails this step with one line, before anything opens a disk, and a dry run
    still shows which disk it would have written."""
    act = ctx.action
    if ctx.params.mode != "provision" or act is None:
        return
    from pyinit.disks.inventory import inventory as disk_inventory
    from pyinit.disks.inventory import make_links, stable_links
    from pyinit.disks.report import inventory_event, inventory_lines
    from pyinit.disks.selection import choose
    from pyinit.disks.settle import settle

    logger = log.get_logger()
    wait_for_drivers(ctx)
    waited = settle(SYSFS, timeout=ctx.params.disk_timeout, quiet=DISK_QUIET,
                    baseline=ctx.block_baseline)
    if not waited.settled:
        logger.warning(f"disks: still changing after {ctx.params.disk_timeout:.0f} s "
                       f"(pyinit.disk_timeout); USB storage pending: "
                       f"{', '.join(waited.pending) or 'none'}; taking the inventory as it is")
    ctx.inventory = disk_inventory(SYSFS, DEV)
    min_size = act.size if act.action == "writeImage" else None
    for line in inventory_lines(ctx.inventory, min_size=min_size):
        logger.info(f"disks: {line}")
    log.event("disks", "inventory", waited=waited.seconds,
              **inventory_event(ctx.inventory, min_size=min_size))
    make_links(stable_links(ctx.inventory), DEV)
    if act.action == "inspect":  # the inventory is the point; no disk is chosen
        return
    if act.action == "erase":
        _plan_erase(ctx, act)
        return
    if act.raid is not None:
        _plan_raid(ctx, act, min_size)
        return
    capture = act.action == "readImage"
    choice = choose(ctx.inventory, device=act.source_device if capture
                    else act.destination_device, hints=act.root_device_hints,
                    min_size=min_size, allow_removable=act.allow_removable, capture=capture)
    ctx.device = choice.device
    ctx.summary.update(disk=choice.device, disk_choice=choice.how)
    logger.info(f"disks: {'source' if capture else 'destination'} {choice.device} "
                f"({choice.disk.summary() if choice.disk else 'not in the inventory'}) "
                f"by {choice.how}")


def _plan_raid(ctx: Context, act: Action, min_size: int | None) -> None:
    """A RAID1 root's member disks, every refusal before any disk is touched; the image is
    written to the first."""
    from pyinit import raid

    assert act.raid is not None
    members = raid.plan(act.raid, ctx.inventory, min_size=min_size,
                        allow_removable=act.allow_removable)
    ctx.raid_members = members
    ctx.device = members.paths[0]
    ctx.summary.update(disk=ctx.device, disks=",".join(d.name for d in members.disks),
                       disk_choice=members.how)
    log.get_logger().info(f"disks: RAID{act.raid.level} members "
                          + ", ".join(d.summary() for d in members.disks)
                          + f" by {members.how}; the image goes to {ctx.device}")


def _plan_erase(ctx: Context, act: Action) -> None:
    """Which disks the erase action takes, every refusal before any disk is touched."""
    from pyinit import erase

    logger = log.get_logger()
    ctx.erase_plan = erase.plan(ctx.inventory, devices=act.erase_devices,
                                hints=act.root_device_hints,
                                allow_removable=act.allow_removable,
                                allow_boot_medium=act.allow_boot_medium)
    for line in ctx.erase_plan.skipped:
        logger.info(f"disks: not erased: {line}")
    names = ", ".join(d.name for d in ctx.erase_plan.disks)
    ctx.summary.update(disks=names, disk_choice=ctx.erase_plan.how)
    logger.info(f"disks: to erase ({act.erase_mode}): {names} by {ctx.erase_plan.how}")


def _run_erase(ctx: Context, act: Action) -> None:
    from pyinit import erase

    assert ctx.erase_plan is not None  # planned by step_disks
    start = time.monotonic()
    reports = erase.erase(ctx.erase_plan, act.erase_mode, sysfs=SYSFS)
    seconds = time.monotonic() - start
    ctx.summary.update(erase_mode=act.erase_mode,
                       erased=",".join(f"{r.disk}:{r.method}" for r in reports),
                       seconds=round(seconds, 2))
    log.get_logger().info(f"provision: erased and verified {len(reports)} disk(s) in "
                          f"{seconds:.1f} s")


def _run_inspect(ctx: Context) -> None:
    """The hardware inventory (started by the action step) and the LLDP window, waited for:
    the inspection is what the server stores. A missing inventory fails the action."""
    logger = log.get_logger()
    if ctx.hardware is not None:
        ctx.hardware.join(ctx.params.disk_timeout * 2 + 60)
    if ctx.hardware is None or ctx.hardware.is_alive():
        raise PyinitError("inspect: the hardware inventory was not taken")
    if ctx.lldp_listener is not None:
        logger.info(f"inspect: listening for LLDP up to {ctx.params.lldp_seconds:.0f} s "
                    "(pyinit.lldp_seconds)")
        ctx.lldp_listener.join(ctx.params.lldp_seconds + 5)
    ctx.summary["inspected"] = "hardware inventory" + (", lldp" if ctx.lldp_listener else "")


def step_provision(ctx: Context) -> None:
    """Carry out the action: stream the image onto the disk, or capture the disk and upload it."""
    act = ctx.action
    if act is None:
        return
    logger = log.get_logger()
    if act.dry_run:
        logger.info(f"provision: dryRun set, not running {act.summary()}")
        return
    if act.action == "erase":
        _run_erase(ctx, act)
        return
    if act.action == "inspect":
        _run_inspect(ctx)
        return
    assert ctx.device is not None  # chosen by step_disks
    from pyinit.image.destination import wait_for_device

    if act.action == "readImage":
        from pyinit.capture import capture_image

        assert act.destination_address and ctx.network is not None
        wait_for_device(ctx.device, timeout=DEVICE_TIMEOUT)
        # the token is the provisioning server's: never sent to an upload URL elsewhere
        token = ctx.params.token if same_origin(act.destination_address,
                                                server_base(ctx.params)) else None
        cap = capture_image(ctx.device, act.destination_address, mac=ctx.network.mac,
                            method=act.upload_method, compression=act.capture_compression,
                            session=ctx.session, token=token)
        ctx.summary.update(device=cap.device, upload=cap.url, method=cap.method,
                           compression=cap.compression, bytes_read=cap.bytes_read,
                           bytes_sent=cap.bytes_sent, sha256_raw=cap.sha256_raw,
                           sha256_sent=cap.sha256_sent, seconds=round(cap.seconds, 2))
        logger.info(f"provision: captured {cap.bytes_read} bytes of {cap.device} "
                    f"({cap.compression}, {cap.bytes_sent} sent) to {cap.url} in "
                    f"{cap.seconds:.1f} s")
        return
    assert act.source_image
    from pyinit.image.write import WriteRequest, write_image

    wait_for_device(ctx.device, timeout=DEVICE_TIMEOUT)
    wipe = None
    if ctx.raid_members is not None:
        # old arrays, LVM labels, tables: gone before the write, once every check that needs
        # no disk passed (a refused image leaves the members untouched)
        from functools import partial

        from pyinit import raid

        wipe = partial(raid.wipe, ctx.raid_members, sysfs=SYSFS)
    req = WriteRequest(url=act.source_image, device=ctx.device,
                       checksum=act.checksum, checksum_url=act.checksum_url, size=act.size,
                       verify=act.verify == "full", preserve_on_error=act.preserve_on_error,
                       keyring=_keyring(ctx), signature_url=act.signature_url,
                       checksum_signature_url=act.checksum_signature_url)
    if act.oci is not None:
        req = _oci_request(ctx, act, req)
    res = write_image(req, session=ctx.session, before_open=wipe)
    ctx.summary.update(image=res.url, device=res.device, format=res.format,
                       bytes_written=res.bytes_written, bytes_downloaded=res.bytes_fetched,
                       sha256=res.sha256, sha256_of=res.sha256_of(),
                       checksum_verified=res.checksum_verified, zero_bytes=res.zero_bytes,
                       resumes=res.resumes, restarts=res.restarts,
                       verified_readback=res.verified_readback, seconds=round(res.seconds, 2))
    if res.signer:
        ctx.summary["signer"] = res.signer
    logger.info(f"provision: wrote {res.bytes_written} bytes to {res.device} in "
                f"{res.seconds:.1f} s ({res.bytes_fetched} bytes downloaded, {res.format}); "
                f"sha256 {res.sha256} of {res.sha256_of()}"
                + (f", {res.checksum_verified} verified" if res.checksum_verified else "")
                + (f", signed by {res.signer}" if res.signer else ""))


def _keyring(ctx: Context) -> str | None:
    """The keyring images must be signed by (baked, or pyinit.keyring=), or None. A command
    line keyring over a baked one, or a file that is no keyring, is a ConfigError."""
    from pyinit import keyring

    try:
        path = keyring.resolve(ctx.params.keyring_path, ctx.params.keyring_inline,
                               baked=KEYRING, run=RUN_KEYRING)
    except ValueError as exc:
        raise ConfigError("pyinit.keyring", str(exc)) from exc
    if path is not None:
        log.get_logger().info(f"provision: images must be signed by a key of {path}")
    return str(path) if path is not None else None


def _oci_request(ctx: Context, act: Action, req: WriteRequest) -> WriteRequest:
    """sourceImage oci://…: resolve the manifest to its one layer; the write then streams the
    layer's blob with the registry's auth, its digest as the checksum (docs/image.md)."""
    from pyinit.oci.registry import pull_request

    assert act.oci is not None
    req, art = pull_request(req, act.oci, session=ctx.session, credentials=act.registry_auth,
                            plain_http=act.registry_plain_http)
    layer = art.layer
    log.get_logger().info(
        f"provision: {act.oci}: manifest {art.manifest_digest}, layer {layer.digest} "
        f"({layer.size} bytes, {layer.media_type}"
        + (f", {layer.title}" if layer.title else "") + ")")
    ctx.summary.update(registry=act.oci.registry, repository=act.oci.repository,
                       manifest_digest=art.manifest_digest, layer_digest=layer.digest)
    return req


def _write_action(ctx: Context) -> Action | None:
    """The action when it wrote a disk (not a dry run), else None."""
    act = ctx.action
    if act is None or act.action != "writeImage" or act.dry_run:
        return None
    return act


def step_raid(ctx: Context) -> None:
    """A RAID1 root (docs/grow.md "RAID1 roots"): the root partition grown to the smallest
    member's end, the layout and boot partitions copied to the other members, the md array
    (metadata 1.0) built around the written filesystem, the filesystem grown on it,
    mdadm.conf and the initramfs of the target made to assemble it. On failure the written
    first member stays as it is (as after any failure after the write), the other members'
    ends are zeroed: a half-made copy never looks bootable."""
    act = _write_action(ctx)
    if act is None or act.raid is None:
        return
    from pyinit import raid

    assert ctx.raid_members is not None
    try:
        done = raid.build(ctx.raid_members, act, mountpoint=TARGET, dev=DEV, sysfs=SYSFS)
    except BaseException:
        raid.zero_heads(ctx.raid_members.paths[1:])
        raise
    ctx.grown = done.growth
    ctx.target_root = ctx.summary["target_root"] = done.array.device
    ctx.summary.update(raid=done.array.summary(), grow=done.growth.summary())
    log.get_logger().info(f"raid: {done.summary()}")
    log.event("raid", "array", device=done.array.device, kernel=done.array.kernel,
              members=list(done.array.members), size=done.array.size,
              array=done.array.array_line)


def step_grow(ctx: Context) -> None:
    """growPartition/growDisk: the partition (GPT backup moved to the end), the LVM PV and LV,
    then the filesystem, online — with the target's own tools where it has them. A RAID1 root
    was grown by the raid step."""
    act = _write_action(ctx)
    if act is None or not act.grows or act.raid is not None:
        return
    from pyinit import grow

    assert ctx.device is not None
    ctx.grown = grow.grow(ctx.device, act)
    ctx.summary["grow"] = ctx.grown.summary()
    log.get_logger().info(f"grow: {ctx.grown.summary()}")
    log.event("grow", "sizes", **ctx.grown.event())


def _target_root(ctx: Context, act: Action) -> str:
    """The written system's root device, found once (``rootPartition: auto`` may mount each
    candidate to look) for both configure and handoff."""
    if ctx.target_root is not None:
        return ctx.target_root
    from pyinit import grow

    assert ctx.device is not None
    grown = ctx.grown.partition if ctx.grown is not None else None
    choice = grow.find_root(ctx.device, act, grown=grown, mountpoint=TARGET)
    log.get_logger().info(f"target root: {choice.device} ({choice.how})")
    ctx.target_root = ctx.summary["target_root"] = choice.device
    return choice.device


def step_configure(ctx: Context) -> None:
    """The machine's identity in the target: network (its own format, matched by MAC),
    hostname, SSH keys, optionally a cloud-init NoCloud seed; and, unless ``keepIdentity``,
    everything that must be unique per machine made fresh (docs/identity.md)."""
    act = _write_action(ctx)
    if act is None or not (act.configures or not act.keep_identity or act.confirm_first_boot):
        return
    from pyinit import identity, unique
    from pyinit.target import mounted_target

    logger = log.get_logger()
    try:
        device = _target_root(ctx, act)
    except PyinitError as exc:
        if act.configures:
            raise
        logger.warning(f"configure: no Linux root on the written disk ({exc}); per-machine "
                       "identity not made fresh")
        return
    mac = ctx.network.mac if ctx.network is not None else ""
    interface = ctx.network.interface if ctx.network is not None else ""
    # Only /dev is bound (ssh-keygen opens /dev/null): the target's own /run and resolv.conf
    # must be written, not the installer's.
    with mounted_target(device, TARGET, binds=("/dev",), resolv_conf=None) as t:
        if act.configures:
            res = identity.apply_identity(t.root, act, mac=mac, interface=interface)
            ctx.summary["network_system"] = res.network_system or "none"
            ctx.summary["configured"] = ",".join(res.written)
            for note in res.notes:
                logger.warning(f"configure: {note}")
            logger.info(f"configure: {res.network_system or 'no network system found'}; "
                        f"wrote {', '.join(res.written) or 'nothing'}")
        if act.confirm_first_boot and ctx.params.mode == "provision" and mac:
            _install_firstboot(ctx, t.root, mac)
        if act.keep_identity:
            logger.info("configure: keepIdentity: the image's SSH host keys, machine-id and "
                        "the rest of docs/identity.md are kept")
            return
        fresh = unique.refresh(t.root, hostname=act.hostname, write=identity.write_file,
                               initramfs_keygen=shutil.which("ssh-keygen", path=proc.SAFE_PATH))
    _report_identity(ctx, fresh)


def _install_firstboot(ctx: Context, root: Path, mac: str) -> None:
    """The one-shot that tells the server the deployed system came up (docs/lifecycle.md)."""
    from pyinit import firstboot, identity, rootpath

    logger = log.get_logger()
    url = f"{server_base(ctx.params)}/events/{macaddr.dashes(mac)}"
    try:
        plan = firstboot.plan(**firstboot.detect(root), url=url, token=ctx.params.token)
    except firstboot.FirstBootError as exc:  # the disk is written: a warning, not a failure
        logger.warning(f"configure: {exc}; no first-boot confirmation (the server will show "
                       "it deployed, never booted)")
        return
    if plan.method is None:
        logger.warning("configure: the target has no systemd, /etc/init.d/rcS or /etc/rc.local: "
                       "no first-boot confirmation (the server will show it deployed, never "
                       "booted)")
        return
    for rel, (text, mode) in plan.files.items():
        identity.write_file(root, rel, text, mode)
    for rel, target in plan.symlinks.items():
        identity.write_symlink(root, rel, target)
    if plan.rc_local:
        current = rootpath.resolve(root, firstboot.RC_LOCAL).read_text()
        if firstboot.RC_LOCAL_LINE not in current:
            lines = current.splitlines()
            at = next((i for i in range(len(lines) - 1, -1, -1)
                       if lines[i].strip() == "exit 0"), len(lines))  # before a final exit 0
            lines.insert(at, firstboot.RC_LOCAL_LINE)
            identity.write_file(root, firstboot.RC_LOCAL, "\n".join(lines) + "\n", 0o755)
    ctx.summary["firstboot"] = plan.method
    logger.info(f"configure: first-boot confirmation: {plan.method}; the target will post to "
                f"{url} once it is up")


def _report_identity(ctx: Context, fresh: unique.Refreshed) -> None:
    logger = log.get_logger()
    for item, paths in sorted(fresh.removed.items()):
        logger.info(f"configure: the image carried {item} ({', '.join(paths)}): removed")
    for line in fresh.shared_secrets:
        logger.warning(f"configure: the image carries {line}; every machine shares it "
                       "(left in place: docs/identity.md)")
    for note in fresh.notes:
        logger.warning(f"configure: {note}")
    for key in fresh.host_keys:
        logger.info(f"configure: SSH host key {key.type.upper()} {key.fingerprint} "
                    f"({key.path}.pub)")
    logger.info(f"configure: per-machine identity: {fresh.summary()}")
    ctx.summary["identity"] = fresh.summary()
    log.event("configure", "identity", **fresh.event())


def step_bootentry(ctx: Context) -> None:
    """UEFI: a boot entry for the written disk's loader, first in BootOrder (after the network
    entry this boot came from), pyinit's earlier entries removed (docs/lifecycle.md); a RAID1
    root: one per member disk, in the members' order."""
    act = _write_action(ctx)
    if act is None:
        return
    if act.uefi_boot_entry is False:
        log.get_logger().info("bootentry: uefiBootEntry false: the firmware's boot entries "
                              "are left as they are")
        return
    from pyinit import efiboot

    assert ctx.device is not None and act.source_image
    if ctx.raid_members is not None:  # one per member disk, the first member's first
        made_ids: list[str] = []
        summaries: list[str] = []
        for disk in reversed(ctx.raid_members.paths):
            one = efiboot.make_entry(disk, label=efiboot.entry_label(
                act.source_image, None if disk == ctx.device else disk),
                required=act.uefi_boot_entry is True, sysfs=SYSFS, keep=made_ids)
            made_ids += [one.number] if one.number else []
            summaries.insert(0, one.summary)
        ctx.summary["boot_entry"] = ",".join(summaries)
        return
    made = efiboot.make_entry(ctx.device, label=efiboot.entry_label(act.source_image),
                              required=act.uefi_boot_entry is True, sysfs=SYSFS)
    ctx.summary["boot_entry"] = made.summary


def step_prepare(ctx: Context) -> None:
    """kexec: find the target's kernel, initrd(s) and command line (grub.cfg, BLS, /boot) and
    load them; switch_root: mount the target and check its init. Nothing irreversible here."""
    act = _write_action(ctx)
    if act is None or act.drop_to_shell or act.finish not in ("kexec", "switch_root"):
        return
    device = _target_root(ctx, act)
    logger = log.get_logger()
    if act.finish == "kexec":
        from pyinit.bootcfg.find import find_boot_entry
        from pyinit.kexec import kexec_load, kexec_reboot
        from pyinit.target import mounted_target

        with mounted_target(device, TARGET, binds=(), resolv_conf=None, read_only=True) as t:
            entry = find_boot_entry(t.root)
            for note in entry.notes:
                logger.warning(f"handoff: {note}")
            logger.info(f"handoff: kexec {entry.describe()}")
            kexec_load(entry, t.root)
        ctx.summary["kexec"] = entry.kernel
        ctx.boot, ctx.boot_kind = kexec_reboot, "kexec"
        return
    from pyinit.ginit import mount_root
    from pyinit.switchroot import check_switch_root, switch_root

    mount_root(device, NEWROOT)
    init = check_switch_root(NEWROOT, "/sbin/init")
    logger.info(f"handoff: switch_root into {NEWROOT}, exec {init}")
    ctx.boot, ctx.boot_kind = (lambda: switch_root(NEWROOT, "/sbin/init")), "switch_root"


def step_entrypoint(ctx: Context) -> None:
    """ginit mode: mount root= and run entrypoint= inside it, on the console; with
    ``pyinit.exec=1`` it becomes PID 1 instead (switch_root, done by the handoff step)."""
    p = ctx.params
    if p.mode != "ginit" or p.root is None:
        return
    from pyinit.ginit import mount_root, run_entrypoint

    mount_root(p.root, NEWROOT, fstype=p.rootfstype)
    if p.exec_entrypoint:
        from pyinit.switchroot import check_switch_root, exec_entrypoint

        argv = list(p.entrypoint)
        check_switch_root(NEWROOT, argv[0])
        ctx.boot = lambda: exec_entrypoint(NEWROOT, argv)
        ctx.boot_kind = "exec"
        log.get_logger().info(f"entrypoint: {argv[0]} will run as PID 1 (pyinit.exec=1)")
        return
    ctx.entrypoint_rc = run_entrypoint(NEWROOT, p.entrypoint)
    ctx.summary["entrypoint_rc"] = ctx.entrypoint_rc
    if ctx.entrypoint_rc != 0:
        raise PyinitError(f"entrypoint {p.entrypoint[0]} exited {ctx.entrypoint_rc}")


def handoff_kind(ctx: Context) -> str:
    """What the machine does once provisioned: kexec, switch_root, exec (ginit), reboot,
    poweroff or shell. Pure."""
    act = ctx.action
    what: str = act.finish if act is not None else ctx.params.on_failure
    if act is not None and act.drop_to_shell:
        what = "shell"
    if ctx.boot_kind is not None:
        what = ctx.boot_kind
    elif what in ("kexec", "switch_root"):  # nothing was written to hand off to (dry run, read)
        log.get_logger().warning(f"handoff: {what} needs a written target; rebooting instead")
        what = "reboot"
    return what


def result_fields(summary: dict[str, Any]) -> str:
    """``key=value`` for the RESULT line, each value quoted as a shell would need it
    (``sha256_of='the downloaded file (compressed zstd, 312 MB)'``): the line splits back into
    its fields with ``shlex.split``. Pure."""
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in summary.items())


def step_handoff(ctx: Context) -> None:
    """The point of no return, the last step: say what happens now (``handoff now how=kexec``),
    report the result (the machine is gone after), then kexec, switch_root, exec the
    entrypoint, reboot, power off or open a shell. Returns only by raising, when that last call
    failed: the step fails, and the failure policy runs."""
    what = handoff_kind(ctx)
    stop_background(ctx)
    # "now" before the result: the server's summary counts any event after a result as a
    # new run; the result stays the last word unless the last call fails
    log.event("handoff", "now", how=what)
    log.event("result", "ok", handoff=what, **ctx.summary)
    log.console("pyinit: RESULT ok " + result_fields(ctx.summary))
    log.console(f"pyinit: {what} now")
    if ctx.sink is not None:
        ctx.sink.flush()
    if ctx.boot is not None:
        ctx.boot()  # returns only by raising
        raise PyinitError(f"{what} returned")
    if what in ("reboot", "poweroff"):
        policy.power(what, announce=False)  # returns only if reboot(2) failed (logged)
        raise PyinitError(f"{what} failed: reboot(2) returned")
    policy.apply(what, "finished")  # the shell: never returns


STEPS: tuple[tuple[str, Callable[[Context], None]], ...] = (
    ("rootfs", step_rootfs),
    ("modules", step_modules),
    ("network", step_network),
    ("action", step_action),
    ("disks", step_disks),
    ("provision", step_provision),
    ("raid", step_raid),
    ("grow", step_grow),
    ("configure", step_configure),
    ("bootentry", step_bootentry),
    ("entrypoint", step_entrypoint),
    ("prepare", step_prepare),
    ("handoff", step_handoff),
)


# ---- runner ------------------------------------------------------------------------------


class StepFailed(Exception):
    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error
        super().__init__(f"{step}: {error}")


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, PyinitError) else f"{type(err).__name__}: {text}"


def run_steps(ctx: Context, steps: tuple[tuple[str, Callable[[Context], None]], ...] = STEPS,
              *, clock: Callable[[], float] = time.monotonic) -> None:
    logger = log.get_logger()
    total = len(steps)
    for i, (name, func) in enumerate(steps, start=1):
        if name in ctx.params.break_before:
            log.event(name, "break")
            policy.shell(f"pyinit.break={name}")
        logger.info(f"[{i}/{total}] {name}: start")
        log.event(name, "start")
        start = clock()
        try:
            func(ctx)
        except BaseException as exc:
            elapsed = round(clock() - start, 2)
            logger.error(f"[{i}/{total}] {name}: FAILED: {one_line(exc)}")
            log.event(name, "failed", elapsed=elapsed, error=one_line(exc),
                      kind=type(exc).__name__)
            raise StepFailed(name, exc) from exc
        elapsed = round(clock() - start, 2)
        logger.info(f"[{i}/{total}] {name}: ok ({elapsed} s)")
        log.event(name, "ok", elapsed=elapsed)


def fail(ctx: Context, exc: BaseException) -> None:
    step = exc.step if isinstance(exc, StepFailed) else "init"
    err = exc.error if isinstance(exc, StepFailed) else exc
    if not isinstance(err, PyinitError):
        # A bug, not an expected failure: the traceback goes to the console and /dev/kmsg.
        for line in traceback.format_exception(err):
            log.console(line.rstrip("\n"))
    # The parsed params hold the policy once parse_cmdline succeeded; before that (no command
    # line read yet, or a command line that does not parse) pick pyinit.on_failure= out alone.
    pol = (ctx.params.on_failure if ctx.params_parsed
           else failure_policy(ctx.cmdline or _read_cmdline()))
    stop_background(ctx)
    log.event("result", "failed", failed_step=step, error=one_line(err), policy=pol,
              **ctx.summary)
    log.console(f"pyinit: RESULT failed step={step} error={one_line(err)} policy={pol}")
    if ctx.sink is not None:
        ctx.sink.flush()
    policy.apply(pol, f"{step} failed")


def _read_cmdline() -> str:
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


def main() -> None:
    """The frozen /init entry point. Never returns when running as PID 1."""
    if os.getpid() != 1 and os.environ.get("PYINIT_NOT_PID1") != "1":
        print("pyinit: this is an init (PID 1) for an initramfs; refusing to run as PID "
              f"{os.getpid()}", file=sys.stderr)
        raise SystemExit(2)
    early_error: BaseException | None = None
    try:
        _early_console()
    except BaseException as exc:  # reported below, once logging has somewhere to go
        early_error = exc
    log.configure(console=sys.stdout, kmsg=Path("/dev/kmsg") if Path("/dev/kmsg").exists()
                  else None)
    log.console(f"pyinit {__version__} starting as PID {os.getpid()}")
    policy.install_signal_handlers()
    policy.start_reaper()
    ctx = Context()
    try:
        if early_error is not None:
            raise StepFailed("rootfs", early_error)
        run_steps(ctx)
    except BaseException as exc:
        try:
            fail(ctx, exc)
        except BaseException as exc2:  # the guard of the guard: still never exit
            log.console(f"pyinit: failure handling failed: {exc2!r}")
    policy.idle_forever()


def _early_console() -> None:
    """stdio on /dev/console (the kernel already opens it when it exists; be sure)."""
    rootfs.apply(rootfs.CONSOLE)
    if Path("/dev/console").exists():
        try:
            fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
        except OSError:
            return
        for target in (0, 1, 2):
            os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False, encoding="utf-8",
                               errors="replace")
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False, encoding="utf-8",
                               errors="replace")


if __name__ == "__main__":
    main()
