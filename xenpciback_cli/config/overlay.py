"""The overlay engine: what a guest reads from, and writes to, one passed-through device.

Sans-IO. An :class:`OverlayDevice` is built when a device is exported, from a hardware accessor
and the device's resources; the backend then feeds it guest ``conf_read``/``conf_write`` ops and
sends back ``(err, value)``. It follows Linux pciback's field model (``conf_space.c``,
``conf_space_header.c`` and ``conf_space_capability.c`` in ``drivers/xen/xen-pciback/``) and is
stricter on purpose where Linux is sloppy (docs/linux-differences.md):

* offsets outside the device's config space, negative offsets, misaligned accesses and sizes other
  than 1, 2, 4 are ``XEN_PCI_ERR_invalid_offset`` - checked by a single table lookup;
* a read returns only the bytes asked for;
* quirk masks are enforced, and a quirk that would overlap a field is refused, not ignored;
* MSI/MSI-X enable bits never reach hardware through config writes, even in permissive mode
  (the enable ops do that), and the MSI/MSI-X register bodies are read-only even in permissive mode;
* when several fields are written by one access, the first error is kept.

Read path: for each valid (size, offset) a precomputed pair (bits read from hardware, virtual
value of the rest). Emulated and constant fields therefore cost two dict lookups and touch no
hardware; the pairs are refreshed for the few affected entries whenever a virtual value changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xenpciback_cli.config import capabilities
from xenpciback_cli.config.fields import (
    READ_CONSTANT,
    READ_EMULATED,
    READ_HARDWARE,
    READ_MIXED,
    ConfigAccessError,
    Field,
    HardwareAccessor,
    QuirkError,
)
from xenpciback_cli.config.registers import (
    BAR_MEM_PREFETCH,
    BAR_MEM_TYPE_64,
    BAR_MEM_TYPE_MASK,
    BAR_SPACE_IO,
    BIST_START,
    COMMAND_GUEST_BITS,
    CONFIG_SIZE,
    EXT_CONFIG_SIZE,
    HEADER_TYPE_MASK,
    MSI_FLAGS_64BIT,
    MSI_FLAGS_ENABLE,
    MSI_FLAGS_MASKBIT,
    MSIX_FLAGS_ENABLE,
    MSIX_FLAGS_MASKALL,
    PM_CAP_D1,
    PM_CAP_D2,
    PM_CAP_PME_MASK,
    PM_CTRL_DATA_SEL_MASK,
    PM_CTRL_PME_ENABLE,
    PM_CTRL_PME_STATUS,
    PM_CTRL_STATE_MASK,
    ROM_RESOURCE_INDEX,
    VPD_ADDR_F,
    CapId,
    Command,
    HeaderType,
    Reg,
    XenPciErr,
)
from xenpciback_cli.pci import ioresource
from xenpciback_cli.pci.device import PciDevice, Resource
from xenpciback_cli.pci.quirk import Quirk

#: A read-table entry: hardware mask, virtual bits, and the reply when no hardware is read.
_ReadEntry = tuple[int, int, tuple[int, int]]
#: A whole-field write entry: the writer (None: nothing to do), its first argument, width mask.
_WholeEntry = tuple[Callable[[Any, int], int] | None, Field | int, int]

_OK = 0
_INVALID = int(XenPciErr.INVALID_OFFSET)
_DENIED = int(XenPciErr.ACCESS_DENIED)
_INVALID_READ = (_INVALID, 0)
_WIDTH = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
_SIZES = (1, 2, 4)
#: The read entry of an access no field touches (all bits from hardware), one per size.
_UNOWNED_READ: dict[int, _ReadEntry] = {size: (_WIDTH[size], 0, (_OK, 0)) for size in _SIZES}
_COMMAND = int(Reg.COMMAND)
_CACHE_LINE = int(Reg.CACHE_LINE_SIZE)
_BIST = int(Reg.BIST)
_DECODE = int(Command.IO | Command.MEMORY)
_MASTER = int(Command.MASTER)
_MWI = int(Command.INVALIDATE)
_INTX_DISABLE = int(Command.INTX_DISABLE)
_GUEST = int(COMMAND_GUEST_BITS)
_NOT_GUEST = ~_GUEST & 0xFFFF
#: PMCSR bits a guest writes besides the power state.
_PM_GUEST_BITS = PM_CTRL_PME_STATUS | PM_CTRL_DATA_SEL_MASK
#: Write kinds whose handler does nothing at all (a whole-field write needs no call).
_NOOP_KINDS = frozenset({"drop", "readonly"})
#: Write kinds whose handler changes the field's virtual value.
_CHANGING_KINDS = frozenset({"command", "bar", "rom"})


@dataclass
class Policy:
    """Settings shared by every device one backend serves: Linux's module parameter
    ``permissive``. Whoever serves owns one and passes it to each device it exports; there is
    no process-wide instance."""

    permissive: bool = False


class OverlayDevice:
    """One exported device's config space as its guest sees it."""

    def __init__(self, hw: HardwareAccessor, *, resources: Sequence[Resource] | None = None,
                 config_size: int | None = None, vendor_id: int | None = None,
                 device_id: int | None = None, irq: int = 0, permissive: bool = False,
                 allow_interrupt_control: bool = False, quirks: Iterable[Quirk] = (),
                 policy: Policy | None = None) -> None:
        self._hw = hw
        self._hw_read = hw.read  # bound once: the hot paths call these directly
        self._hw_write = hw.write
        self.permissive = permissive
        self.allow_interrupt_control = allow_interrupt_control
        self.policy = policy if policy is not None else Policy()  # nobody else's: the default
        self.resources = None if resources is None else tuple(resources)
        snapshot = b"".join(_read_or_ones(hw, o).to_bytes(4, "little")
                            for o in range(0, CONFIG_SIZE, 4))
        self.header_type = snapshot[Reg.HEADER_TYPE] & HEADER_TYPE_MASK
        self.caps = capabilities.walk(snapshot)
        #: What the overlay ignored about this device and why (capabilities that do not fit,
        #: an export step that could not be done); ``inspect`` shows them.
        self.problems: list[str] = []
        if config_size is None:
            # From the capabilities (as Linux's pci_cfg_space_size), not from what was readable.
            config_size = capabilities.config_space_size(
                snapshot, lambda offset: _read_or_none(hw, offset))
        if config_size not in (CONFIG_SIZE, EXT_CONFIG_SIZE):
            raise ValueError(f"config size must be 256 or 4096, not {config_size}")
        self.config_size = config_size
        self.vendor_id = int.from_bytes(snapshot[0:2], "little") if vendor_id is None else vendor_id
        self.device_id = int.from_bytes(snapshot[2:4], "little") if device_id is None else device_id
        self.irq = irq
        self.enabled = False  # Linux: the device is disabled after being seized
        self.enable_intx = False  # fake-IRQ handler wanted (Linux: pciback_ops.c, xen_pcibk_control_isr)
        self.dropped_writes = 0
        self.events: list[str] = []
        self._fields: list[Field] = []
        self._owner: list[Field | None] = [None] * config_size
        self._writers = {
            "drop": self._w_drop, "readonly": self._w_drop, "hardware": self._w_hardware,
            "masked": self._w_masked, "command": self._w_command, "bist": self._w_bist,
            "bar": self._w_bar, "rom": self._w_bar, "vpd_address": self._w_vpd_address,
            "pmcsr": self._w_pmcsr, "msi_flags": self._w_msi_flags,
            "msix_flags": self._w_msix_flags,
        }
        # The lookup tables are filled (and refilled, in place) by _rebuild_tables; the op
        # closures made below hold them directly.
        self._reads: dict[int, _ReadEntry] = {}
        self._plans: dict[int, tuple[Field, ...]] = {}
        self._whole: dict[int, _WholeEntry] = {}
        self._tables_built = False
        self._build(snapshot)
        for quirk in quirks:
            self.add_quirk(quirk)
        self._rebuild_tables()
        self.op_read, self.op_write = self._make_ops()

    @classmethod
    def for_device(cls, hw: HardwareAccessor, device: PciDevice, **options: object) -> OverlayDevice:
        """The overlay for a host device: resources, dom0 IRQ and the kernel's cached ids from
        the host model (an SR-IOV VF reads all-ones for its ids in hardware)."""
        return cls(hw, resources=device.resources, vendor_id=device.vendor_id,
                   device_id=device.device_id, irq=device.irq or 0, **options)  # type: ignore[arg-type]

    # -- building the field table ----------------------------------------------------------
    def _add(self, field: Field) -> bool:
        """Add a field unless any of its bytes already belongs to one (stricter than Linux,
        which compares only start offsets) or it leaves config space."""
        field.offset, field.hw_mask, field.virtual = \
            int(field.offset), int(field.hw_mask), int(field.virtual)  # no enum arithmetic later
        if field.offset < 0 or field.end > self.config_size:
            return False
        if any(self._owner[b] is not None for b in range(field.offset, field.end)):
            return False
        self._fields.append(field)
        for b in range(field.offset, field.end):
            self._owner[b] = field
        return True

    def _const(self, offset: int, size: int, name: str, value: int,
               kind: str = READ_CONSTANT) -> None:
        self._add(Field(offset, size, name, kind, 0, value, "drop"))

    def _hwf(self, offset: int, size: int, name: str, write_kind: str = "drop") -> None:
        self._add(Field(offset, size, name, READ_HARDWARE, _WIDTH[size], 0, write_kind))

    def _build(self, snap: bytes) -> None:
        hw_command = int.from_bytes(snap[4:6], "little")
        self._const(Reg.VENDOR_ID, 2, "vendor ID", self.vendor_id)
        self._const(Reg.DEVICE_ID, 2, "device ID", self.device_id)
        self._vcmd = hw_command
        self._add(Field(Reg.COMMAND, 2, "command", READ_MIXED, int(COMMAND_GUEST_BITS),
                        hw_command & ~COMMAND_GUEST_BITS & 0xFFFF, "command"))
        self._hwf(Reg.CACHE_LINE_SIZE, 1, "cache line size", "hardware")
        self._hwf(Reg.LATENCY_TIMER, 1, "latency timer")
        self._hwf(Reg.BIST, 1, "BIST", "bist")
        self._const(Reg.INTERRUPT_LINE, 1, "interrupt line", self.irq & 0xFF)
        self._hwf(Reg.INTERRUPT_PIN, 1, "interrupt pin")
        if self.header_type in (HeaderType.NORMAL, HeaderType.BRIDGE):
            self._build_bars(snap)
        for cap_id, builder in ((CapId.VPD, self._build_vpd), (CapId.PM, self._build_pm),
                                (CapId.MSI, self._build_msi), (CapId.MSIX, self._build_msix)):
            cap = self.caps.find(cap_id)
            if cap is None or cap.offset < 0x40:  # Linux ignores pointers into the header
                continue
            end = cap.offset + _cap_length(cap_id, snap, cap.offset)
            if end > CONFIG_SIZE:
                # A standard capability lives in 0x40-0xff; one running past 0x100 would put
                # fields (and PMCSR's export-time write) on extended space or past the device.
                self.problems.append(
                    f"{cap.name} capability at {cap.offset:#04x} runs past 0x100 (to {end:#05x}): "
                    "ignored by the overlay (its registers read from hardware, writes dropped)")
                continue
            self._hwf(cap.offset, 2, f"{cap.name} capability header")
            builder(cap.offset, snap)

    def _resource(self, index: int) -> Resource | None:
        if self.resources is None:
            return None
        return next((r for r in self.resources if r.index == index), None)

    def _build_bars(self, snap: bytes) -> None:
        count = 6 if self.header_type == HeaderType.NORMAL else 2
        previous_64 = False
        for pos in range(count):
            offset = Reg.BAR0 + 4 * pos
            raw = int.from_bytes(snap[offset:offset + 4], "little")
            field = Field(offset, 4, f"BAR{pos}", READ_EMULATED, 0, 0, "bar")
            if self.resources is None:
                # No resource information (a dump or image): show the address, size unknown.
                field.size_known = False
                field.bar_val = raw
                field.bar_len = 0
                upper = previous_64
                previous_64 = not upper and not raw & BAR_SPACE_IO and \
                    (raw & BAR_MEM_TYPE_MASK) == BAR_MEM_TYPE_64
            else:
                lower = self._resource(pos - 1) if pos else None
                upper = lower is not None and lower.is_mem and lower.is_64bit
                if upper and lower is not None:
                    size = lower.size
                    field.bar_val = (lower.start >> 32) & 0xFFFFFFFF
                    field.bar_len = ((-size) >> 32) & 0xFFFFFFFF if size else 0
                    field.restorable = _res_usable(lower)
                else:
                    res = self._resource(pos)
                    field.bar_val, field.bar_len = _bar_values(res)
                    field.restorable = _res_usable(res)
            raw_is_io = bool(field.bar_val & BAR_SPACE_IO) if not upper else False
            field.bar_sizing_mask = 0 if upper else (0x3 if raw_is_io else 0xF)
            if upper:
                field.name = f"BAR{pos} (upper half of BAR{pos - 1})"
            field.virtual = field.bar_val
            self._add(field)
        rom_offset = Reg.ROM_ADDRESS if self.header_type == HeaderType.NORMAL \
            else Reg.BRIDGE_ROM_ADDRESS
        rom = Field(rom_offset, 4, "expansion ROM", READ_EMULATED, 0, 0, "rom")
        rom.bar_sizing_mask = 0x7FF
        if self.resources is None:
            rom.size_known = False
            rom.bar_val = int.from_bytes(snap[rom_offset:rom_offset + 4], "little")
        else:
            res = self._resource(ROM_RESOURCE_INDEX)
            rom.bar_val, rom.bar_len = _bar_values(res)
            rom.restorable = _res_usable(res)
        rom.virtual = rom.bar_val
        self._add(rom)

    def _build_vpd(self, pos: int, snap: bytes) -> None:
        self._hwf(pos + 2, 2, "VPD address", "vpd_address")
        self._hwf(pos + 4, 4, "VPD data")

    def _build_pm(self, pos: int, snap: bytes) -> None:
        self._pm = pos
        self._add(Field(pos + 2, 2, "PM capabilities", READ_MIXED, ~PM_CAP_PME_MASK & 0xFFFF, 0,
                        "drop"))
        self._hwf(pos + 4, 2, "PM control/status", "pmcsr")
        self._hwf(pos + 6, 1, "PM bridge extensions")
        self._hwf(pos + 7, 1, "PM data")

    def prepare_export(self) -> list[tuple[int, int, int]]:
        """Linux's bind-time hardware step, done once when the device is exported: clear
        PME_Enable in PMCSR (a guest must not get wake-ups armed by the host).

        Building the overlay never writes hardware; this is the one write made without a guest
        asking, only to a PMCSR the field table holds (inside 0x40-0xff). Returns the writes
        made as ``(offset, size, value)``; a device that cannot be read or written is noted in
        ``problems`` instead of raising.
        """
        if self._pm is None:
            return []
        offset = self._pm + 4
        try:
            pmcsr = self._hw_read(offset, 2)
            if not pmcsr & PM_CTRL_PME_ENABLE:
                return []
            value = pmcsr & ~PM_CTRL_PME_ENABLE & ~PM_CTRL_PME_STATUS
            self._hw_write(offset, 2, value)
        except ConfigAccessError as exc:
            self.problems.append(f"could not clear PME_Enable in PMCSR at {offset:#04x} "
                                 f"(error {exc.err})")
            return []
        return [(offset, 2, value)]

    def _build_msi(self, pos: int, snap: bytes) -> None:
        self._msi = pos
        flags = int.from_bytes(snap[pos + 2:pos + 4], "little")
        self._hwf(pos + 2, 2, "MSI message control", "msi_flags")
        self._ro(pos + 4, 4, "MSI address")
        at = pos + 8
        if flags & MSI_FLAGS_64BIT:
            self._ro(at, 4, "MSI upper address")
            at += 4
        self._ro(at, 2, "MSI data")
        if flags & MSI_FLAGS_MASKBIT:
            self._ro(at + 4, 4, "MSI mask bits")
            self._ro(at + 8, 4, "MSI pending bits")

    def _build_msix(self, pos: int, snap: bytes) -> None:
        self._msix = pos
        self._hwf(pos + 2, 2, "MSI-X message control", "msix_flags")
        self._ro(pos + 4, 4, "MSI-X table offset/BIR")
        self._ro(pos + 8, 4, "MSI-X PBA offset/BIR")

    def _ro(self, offset: int, size: int, name: str) -> None:
        self._add(Field(offset, size, name, READ_HARDWARE, _WIDTH[size], 0, "readonly"))

    _pm: int | None = None
    _msi: int | None = None
    _msix: int | None = None

    # -- quirks ------------------------------------------------------------------------------
    def add_quirk(self, quirk: Quirk) -> Field:
        """Add a pass-through register with an enforced write mask (sysfs ``quirks``)."""
        offset, size, mask = quirk.offset, quirk.size, quirk.mask
        if size not in _SIZES:
            raise QuirkError(f"quirk size must be 1, 2 or 4, not {size}")
        if offset < 0 or offset + size > self.config_size:
            raise QuirkError(f"quirk at {offset:#x} is outside the {self.config_size}-byte "
                             "config space")
        if offset % size:
            raise QuirkError(f"quirk at {offset:#x} is not aligned to its size {size}")
        if mask & ~_WIDTH[size] or mask < 0:
            raise QuirkError(f"quirk mask {mask:#x} does not fit in {size} bytes")
        field = Field(offset, size, f"quirk {offset:#05x}", READ_HARDWARE, _WIDTH[size], 0,
                      "masked", mask=mask)
        if not self._add(field):
            owner = next(o for o in self._owner[offset:offset + size] if o is not None)
            raise QuirkError(f"quirk at {offset:#x} overlaps the {owner.name} field at "
                             f"{owner.offset:#x}")
        if self._tables_built:
            self._rebuild_tables()
        return field

    def remove_quirks(self) -> None:
        """Drop every quirk (Linux does so on guest detach)."""
        for field in [f for f in self._fields if f.write_kind == "masked"]:
            self._fields.remove(field)
            for b in range(field.offset, field.end):
                self._owner[b] = None
        self._rebuild_tables()

    # -- lookup tables -----------------------------------------------------------------------
    # Keys are ``offset << 3 | size``: sizes 1, 2, 4 fit in the low three bits, so a key exists
    # only for a valid, aligned, in-range access touching a field; every other (offset, size)
    # misses the dict and is checked by _unowned_op (invalid, or all on unowned bytes).
    # Negative offsets give negative keys (never present); sizes above 4 are refused first.

    def _rebuild_tables(self) -> None:
        reads: dict[int, _ReadEntry] = {}
        plans: dict[int, tuple[Field, ...]] = {}
        whole: dict[int, _WholeEntry] = {}
        affected: dict[int, list[tuple[int, int, int]]] = {id(f): [] for f in self._fields}
        for field in self._fields:
            field.writer = self._writers[field.write_kind]
        owners = self._owner
        for size in _SIZES:
            for offset in range(0, self.config_size, size):
                key = offset << 3 | size
                if not any(owners[offset:offset + size]):
                    # No field: all hardware, writes dropped or written through in permissive
                    # mode. Tabled in the standard 256 bytes, where drivers read (status, class,
                    # header type, subsystem IDs...), with shared read entries; not in extended
                    # space (three dicts of ~7000 entries per device were ~2.5 MB and serve
                    # holds hundreds of devices): a miss that is a valid access is one of
                    # these (_unowned_op).
                    if offset < CONFIG_SIZE:
                        reads[key] = _UNOWNED_READ[size]
                        whole[key] = (self._w_unowned, key, _WIDTH[size])
                    continue
                hwmask = 0
                seen: list[Field] = []
                for i in range(size):
                    owner = self._owner[offset + i]
                    if owner is None:
                        hwmask |= 0xFF << (8 * i)
                        continue
                    shift = 8 * (offset + i - owner.offset)
                    hwmask |= ((owner.hw_mask >> shift) & 0xFF) << (8 * i)
                    if owner not in seen:
                        seen.append(owner)
                virt = self._virtual_value(offset, size)
                reads[key] = (hwmask, virt, (_OK, virt))
                seen.sort(key=self._fields.index)  # Linux applies fields in list order
                plans[key] = tuple(seen)
                if not seen:  # no field: dropped, or written through in permissive mode
                    whole[key] = (self._w_unowned, key, _WIDTH[size])
                elif len(seen) == 1 and seen[0].offset == offset and seen[0].size == size:
                    field = seen[0]
                    # A write that changes nothing needs no call: the reply is ready-made.
                    writer = None if field.write_kind in _NOOP_KINDS else field.writer
                    whole[key] = (writer, field, _WIDTH[size])
                for owner in seen:
                    affected[id(owner)].append((key, offset, size))
        changing = [f for f in self._fields if f.write_kind in _CHANGING_KINDS]
        for field in self._fields:
            field.read_entries = tuple((key, offset, size, reads[key][0])
                                       for key, offset, size in affected[id(field)])
            shares = any(other is not field and other in plans[key]
                         for other in changing for key, _, _ in affected[id(field)])
            field.entry_cache = None if shares else {}
        # Refilled in place: the op closures hold these very dicts.
        self._reads.clear()
        self._reads.update(reads)
        self._plans.clear()
        self._plans.update(plans)
        self._whole.clear()
        self._whole.update(whole)
        self._tables_built = True

    def _set_virtual(self, field: Field, value: int) -> None:
        """Change a field's virtual value and refresh the read entries that cover it.

        A field's virtual value takes few distinct values (a BAR: address or size mask; COMMAND:
        what the guest writes), so the refreshed entries are cached per value and applied with
        one dict update. That is valid because no read
        entry covers two fields whose virtual values change (checked when the tables are built;
        such fields are not cached).
        """
        value &= field.width_mask
        if value == field.virtual:
            return
        field.virtual = value
        cache = field.entry_cache
        entries = cache.get(value) if cache is not None else None
        if entries is None:
            entries = {}
            for key, offset, size, hwmask in field.read_entries:
                virt = self._virtual_value(offset, size)
                entries[key] = (hwmask, virt, (_OK, virt))
            if cache is not None and len(cache) < 32:
                cache[value] = entries
        self._reads.update(entries)

    def _virtual_value(self, offset: int, size: int) -> int:
        """The virtual bits of ``size`` bytes at ``offset``, from the fields that own them."""
        value = 0
        owners = self._owner
        for i in range(size):
            owner = owners[offset + i]
            if owner is not None:
                shift = 8 * (offset + i - owner.offset)
                value |= (((owner.virtual & ~owner.hw_mask) >> shift) & 0xFF) << (8 * i)
        return value

    # -- the guest's ops (hot path) ----------------------------------------------------------
    def _make_ops(self) -> tuple[Callable[..., tuple[int, int]], Callable[..., tuple[int, int]]]:
        """The guest's ``conf_read`` and ``conf_write`` as closures over the lookup tables.

        Both take ``(offset, size, value)`` and return ``(err, value)``, the op dispatcher's
        signature, so ``serve`` (not written yet) can put them straight into its dispatch dict.
        Closures rather than methods because this is the per-op path: the tables and the hardware's
        bound methods are local cells, not attribute lookups, and every valid (offset, size) is one
        dict lookup.
        """
        get_read = self._reads.get
        get_whole = self._whole.get
        hw_read = self._hw_read
        invalid = (_INVALID, 0)
        done = (_OK, 0)
        write_parts = self._write_parts
        unowned_op = self._unowned_op

        def op_read(offset: int, size: int, _value: int = 0) -> tuple[int, int]:
            # Keys are offset << 3 | size; sizes above 4 would alias other keys, so they go first.
            if size > 4:
                return invalid
            entry = get_read(offset << 3 | size)
            if entry is None:
                return unowned_op(offset, size, None)
            hwmask, virt, reply = entry
            if hwmask:
                try:
                    return _OK, (hw_read(offset, size) & hwmask) | virt
                except ConfigAccessError as exc:
                    return exc.err, 0
            return reply  # emulated or constant: no hardware, no allocation

        def op_write(offset: int, size: int, value: int) -> tuple[int, int]:
            if size > 4:
                return invalid
            key = offset << 3 | size
            entry = get_whole(key)
            if entry is None:
                return write_parts(key, offset, size, value), 0
            writer, field, width = entry  # exactly one whole field (or none): nothing to merge
            if writer is None:
                return done
            try:
                return writer(field, value & width), 0
            except ConfigAccessError as exc:
                return exc.err, 0

        return op_read, op_write

    def read(self, offset: int, size: int, _value: int = 0) -> tuple[int, int]:
        """A guest ``conf_read``: ``(err, value)``; value holds only the requested bytes."""
        return self.op_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> int:
        """A guest ``conf_write``: the wire error code."""
        return self.op_write(offset, size, value)[0]

    def _unowned_op(self, offset: int, size: int, value: int | None) -> tuple[int, int]:
        """An access missing from the tables: invalid (size, alignment, range), or all of it on
        bytes no field owns - read from hardware, written as :meth:`_w_unowned` says."""
        if size not in _WIDTH or offset < 0 or offset % size or offset + size > self.config_size:
            return _INVALID, 0
        try:
            if value is None:
                return _OK, self._hw_read(offset, size) & _WIDTH[size]
            return self._w_unowned(offset << 3 | size, value & _WIDTH[size]), 0
        except ConfigAccessError as exc:
            return exc.err, 0

    def _w_unowned(self, key: int, value: int) -> int:
        """A write to bytes no field owns: through to hardware only in permissive mode."""
        if self.permissive or self.policy.permissive:
            self._hw_write(key >> 3, key & 7, value)
        else:
            if not self.dropped_writes:
                self.events.append(
                    f"guest tried to write to read-only config space at {key >> 3:#x} "
                    f"(size {key & 7}); dropped (logged once)")
            self.dropped_writes += 1
        return _OK

    def _write_parts(self, key: int, offset: int, size: int, value: int) -> int:
        """A write that is not exactly one field: part of one, or several."""
        fields = self._plans.get(key)
        if fields is None:
            return self._unowned_op(offset, size, value)[0]
        value &= _WIDTH[size]
        try:
            err = _OK
            for field in fields:
                current = self._field_value(field)
                shift = 8 * (offset - field.offset)
                if shift >= 0:
                    merged = (current & ~(_WIDTH[size] << shift)) | (value << shift)
                else:
                    merged = (current & ~(_WIDTH[size] >> -shift)) | (value >> -shift)
                result = field.writer(field, merged & field.width_mask)
                if result and not err:
                    err = result  # stricter than Linux: a later field cannot hide a denial
            return err
        except ConfigAccessError as exc:
            return exc.err

    def _field_value(self, field: Field) -> int:
        if field.hw_mask:
            return (self._hw_read(field.offset, field.size) & field.hw_mask) | \
                (field.virtual & ~field.hw_mask)
        return field.virtual

    # -- write handlers (each returns the wire error) ----------------------------------------
    def _w_drop(self, field: Field, value: int) -> int:
        return _OK

    def _w_hardware(self, field: Field, value: int) -> int:
        self._hw_write(field.offset, field.size, value)
        return _OK

    def _w_masked(self, field: Field, value: int) -> int:
        current = self._hw_read(field.offset, field.size)
        new = (current & ~field.mask) | (value & field.mask)
        if new != current:
            self._hw_write(field.offset, field.size, new)
        return _OK

    def _w_bist(self, field: Field, value: int) -> int:
        current = self._hw_read(_BIST, 1)
        if value == BIST_START or (value & ~BIST_START) == (current & ~BIST_START):
            self._hw_write(_BIST, 1, value)
        return _OK

    def _decode_bits(self) -> int:
        """The decode bits pci_enable_device would turn on: those for the BAR types present."""
        bits = 0
        for field in self._fields:
            if field.write_kind == "bar" and field.bar_sizing_mask and field.bar_val:
                bits |= Command.IO if field.bar_val & BAR_SPACE_IO else Command.MEMORY
        if self.resources is not None and self.header_type == HeaderType.BRIDGE:
            for res in self.resources:
                if res.index > ROM_RESOURCE_INDEX and res.size:
                    bits |= Command.IO if res.is_io else \
                        Command.MEMORY if res.is_mem else 0
        return int(bits)

    def _w_command(self, field: Field, value: int) -> int:
        # Plain ints, not the IntFlag members: enum arithmetic costs microseconds per op.
        hw = self._hw_read(_COMMAND, 2)
        new = hw
        if not self.enabled and value & _DECODE:
            new |= self._decode_bits()
            self.enabled = True
            self.enable_intx = True
        elif self.enabled and not value & _DECODE:
            new &= ~_MASTER  # disabling clears bus mastering only, never decode (XSA-120)
            self.enabled = False
            self.enable_intx = False
        if value & _MASTER:
            new |= _MASTER
        else:
            new &= ~_MASTER
        if value & _MWI and not self._vcmd & _MWI:
            if self._hw_read(_CACHE_LINE, 1):
                new |= _MWI
            else:  # MWI needs a cache line size; Linux's pci_set_mwi fails the same way
                value &= ~_MWI
        elif not value & _MWI and self._vcmd & _MWI:
            new &= ~_MWI
        if self.allow_interrupt_control and (value ^ self._vcmd) & _INTX_DISABLE:
            new = (new & ~_INTX_DISABLE) | (value & _INTX_DISABLE)
        if self.permissive or self.policy.permissive:
            new = (value & _GUEST) | (new & ~_GUEST)
        new &= 0xFFFF
        if new != hw:
            self._hw_write(_COMMAND, 2, new)
        self._vcmd = value
        self._set_virtual(field, value & _NOT_GUEST)
        return _OK

    def _w_bar(self, field: Field, value: int) -> int:
        if (value | field.bar_sizing_mask) == 0xFFFFFFFF:
            self._set_virtual(field, field.bar_len)  # sizing: the guest reads the size mask
            return _OK
        if value == field.bar_val and field.restorable:
            # Only a BAR the kernel assigned is restored: one without a usable resource reads
            # as 0, and writing that 0 would erase the hardware's address (Linux would).
            if self._hw_read(field.offset, 4) != field.bar_val:
                self._hw_write(field.offset, 4, field.bar_val)  # restore after a reset
        self._set_virtual(field, field.bar_val)
        return _OK

    def _w_vpd_address(self, field: Field, value: int) -> int:
        if value & VPD_ADDR_F:
            return _DENIED  # a VPD write request: guests may read VPD, never write it
        self._hw_write(field.offset, 2, value)
        return _OK

    def _w_pmcsr(self, field: Field, value: int) -> int:
        pos = field.offset - 4
        allowed = _PM_GUEST_BITS
        current = self._hw_read(field.offset, 2)
        if (current & allowed) != (value & allowed):
            self._hw_write(field.offset, 2, (current & ~allowed & ~PM_CTRL_PME_ENABLE)
                           | (value & allowed))
            current = self._hw_read(field.offset, 2)
        target = value & PM_CTRL_STATE_MASK
        state = current & PM_CTRL_STATE_MASK
        if target == state:
            return _OK
        pmc = self._hw_read(pos + 2, 2)
        if (target == 1 and not pmc & PM_CAP_D1) or (target == 2 and not pmc & PM_CAP_D2):
            return _DENIED
        if target and state and target < state:
            return _DENIED  # from D1-D3hot only deeper, or back to D0
        self._hw_write(field.offset, 2, (current & ~PM_CTRL_STATE_MASK & ~PM_CTRL_PME_STATUS
                                         & ~PM_CTRL_PME_ENABLE) | target)
        return _OK

    def _interrupt_type(self) -> str:
        if self._msi is not None and self._hw_read(self._msi + 2, 2) & MSI_FLAGS_ENABLE:
            return "msi"
        if self._msix is not None and self._hw_read(self._msix + 2, 2) & MSIX_FLAGS_ENABLE:
            return "msix"
        if not self._hw_read(_COMMAND, 2) & _INTX_DISABLE:
            return "intx"
        return "none"

    def _w_irq_flags(self, field: Field, value: int, enable: int, allowed: int,
                     kind: str) -> int:
        old = self._hw_read(field.offset, 2)
        if value == old:
            return _OK
        if self.allow_interrupt_control:
            if (value ^ old) & ~allowed:
                return _DENIED
            if value & enable and not old & enable and self._interrupt_type() not in \
                    ("none", "intx", kind):
                return _DENIED
            self._hw_write(field.offset, 2, value)
            return _OK
        if self.permissive or self.policy.permissive:
            # Permissive opens other bits, never the enable bit: that is the enable ops' job.
            self._hw_write(field.offset, 2, (value & ~enable) | (old & enable))
            return _OK
        return _DENIED

    def _w_msi_flags(self, field: Field, value: int) -> int:
        return self._w_irq_flags(field, value, MSI_FLAGS_ENABLE, MSI_FLAGS_ENABLE, "msi")

    def _w_msix_flags(self, field: Field, value: int) -> int:
        return self._w_irq_flags(field, value, MSIX_FLAGS_ENABLE,
                                 MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL, "msix")

    # -- lifecycle and description -----------------------------------------------------------
    def reset(self) -> None:
        """Guest detach: BARs back to showing their address; quirks removed."""
        for field in self._fields:
            if field.write_kind in ("bar", "rom"):
                self._set_virtual(field, field.bar_val)
        self.remove_quirks()

    # -- what a restarted backend hands back --------------------------------------------------
    def guest_command(self) -> tuple[int, bool]:
        """COMMAND as the guest last wrote it, and whether that enabled the device: state the
        hardware does not hold for the guest (its virtual bits; the hardware's INTx-disable may
        be the backend's own, set with MSI), so a backend that restarts records it and hands
        it back with :meth:`restore_guest_command` instead of rebuilding it from the hardware."""
        return self._vcmd, self.enabled

    def restore_guest_command(self, value: int, enabled: bool) -> None:
        """Take back what :meth:`guest_command` said in an earlier run; nothing is written to
        the hardware (it kept its own part)."""
        self._vcmd = value & 0xFFFF
        self.enabled = self.enable_intx = bool(enabled)
        field = self.field_at(Reg.COMMAND)
        if field is not None:
            self._set_virtual(field, self._vcmd & _NOT_GUEST)

    def fields(self) -> list[Field]:
        """The field table in the order Linux would apply it."""
        return list(self._fields)

    def field_at(self, offset: int) -> Field | None:
        return self._owner[offset] if 0 <= offset < self.config_size else None

    def guest_view(self, length: int | None = None) -> bytes:
        """Every byte as the guest would read it (dword reads; failed reads show as 0xFF)."""
        out = bytearray()
        for offset in range(0, length or self.config_size, 4):
            err, value = self.read(offset, 4)
            out += (value if err == 0 else 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(out)


def _read_or_none(hw: HardwareAccessor, offset: int) -> int | None:
    """A dword of extended space for sizing config space; ``None`` when it cannot be read."""
    try:
        return hw.read(offset, 4)
    except ConfigAccessError:
        return None


def _cap_length(cap_id: int, snap: bytes, pos: int) -> int:
    """How many bytes of registers the overlay gives a capability (header included)."""
    if cap_id == CapId.MSI:
        flags = int.from_bytes(snap[pos + 2:pos + 4], "little")
        length = 0x0E if flags & MSI_FLAGS_64BIT else 0x0A
        return length + 0x0A if flags & MSI_FLAGS_MASKBIT else length
    return 0x0C if cap_id == CapId.MSIX else 0x08  # MSI-X; VPD and PM


def _read_or_ones(hw: HardwareAccessor, offset: int) -> int:
    """A dword for building the field table; unreadable reads as all-ones (no capability)."""
    try:
        return hw.read(offset, 4)
    except ConfigAccessError:
        return 0xFFFFFFFF


def _type_bits(res: Resource) -> int:
    """The BAR's low type bits. Linux keeps them in the resource flags (bits 0-3); a flags word
    without them (some tools write only the IORESOURCE_* bits) gets them from those bits."""
    bits = res.flags & 0xF
    if res.is_io:
        return bits | BAR_SPACE_IO
    if res.index == ROM_RESOURCE_INDEX:
        return bits & 0x1
    if not bits:
        if res.is_64bit:
            bits |= BAR_MEM_TYPE_64
        if res.is_prefetchable:
            bits |= BAR_MEM_PREFETCH
    return bits


def _res_usable(res: Resource | None) -> bool:
    """A resource the kernel assigned: present, memory or I/O, not disabled or unset, sized."""
    return res is not None and (res.is_io or res.is_mem) and \
        not res.flags & (ioresource.DISABLED | ioresource.UNSET) and res.size > 0


def _bar_values(res: Resource | None) -> tuple[int, int]:
    """Linux's (val, len_val) for a BAR or ROM resource: address|type bits and -size|type bits."""
    if res is None or not _res_usable(res):
        return 0, 0
    low_bits = _type_bits(res)
    size = res.size
    return (res.start & 0xFFFFFFFF) | low_bits, ((-size) & 0xFFFFFFFF) | low_bits
