"""Everything else a Xen administrator types to name PCI devices, parsed and formatted.

* :class:`BdfPattern` - a BDF whose slot and/or function may be ``*`` (``03:00.*``, ``03:*.*``),
  the form of ``xl``'s multi-function specs, pciback's ``new_slot``/``remove_slot`` and the kernel's
  ``hide=`` list.
* :class:`PciSpec` - xl's PCI_SPEC_STRING: ``[DDDD:]BB:DD.F[@VSLOT][,key=value...]``.
  Unlike xl (which runs booleans through ``atoi`` so ``permissive=yes`` silently means 0) booleans
  accept 0/1/yes/no/true/false/on/off and anything else is an error. A vslot is a 5-bit slot
  number (0-1f), so ``@20`` - which xl's hex parser takes and then shifts out of the devfn byte -
  is refused here.
* The kernel's ``xen-pciback.hide=(DDDD:BB:DD.F)(BB:DD.*)`` list: :func:`parse_hide_list` and
  :func:`format_hide_list`.

Every error is one :class:`~xenpciback_cli.errors.InputError` line that quotes the input and says
which part is wrong, because these strings come from people and config files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_TRUE = frozenset({"1", "yes", "true", "on", "y"})
_FALSE = frozenset({"0", "no", "false", "off", "n"})
BOOLEAN_KEYS = ("permissive", "msitranslate", "seize", "power_mgmt")
RDM_POLICIES = ("strict", "relaxed")
SPEC_KEYS = ("bdf", "vslot", "name", "rdm_policy", *BOOLEAN_KEYS)


def _hex_field(text: str, what: str, limit: int, source: str, kind: str) -> int:
    if not text or not _HEX.match(text):
        raise InputError(f"invalid {kind} {source!r}: {what} {text!r} is not hex (0-{limit:x})")
    value = int(text, 16)
    if value > limit:
        raise InputError(f"invalid {kind} {source!r}: {what} {text!r} is above {limit:#x}")
    return value


@dataclass(frozen=True)
class BdfPattern:
    """A PCI address where slot and function may be wildcards (``None`` means ``*``).

    Only :meth:`parse_selector` (lspci's ``-s``) also leaves the bus (or domain) open; such a
    selector names devices on the command line and is never written to a hide list or config.
    """

    domain: int | None
    bus: int | None
    slot: int | None
    function: int | None

    @classmethod
    def parse(cls, text: str, *, kind: str = "PCI address") -> BdfPattern:
        """Parse ``[DDDD:]BB:DD.F``, ``[DDDD:]BB:DD.*`` or ``[DDDD:]BB:*.*``."""
        source = text
        value = text.strip()
        parts = value.split(":")
        if len(parts) not in (2, 3) or "." not in parts[-1]:
            raise InputError(f"invalid {kind} {source!r}: expected [DDDD:]BB:DD.F "
                             "(F may be '*', or DD.F may be '*.*')")
        # xl and pciback take 16-bit domains; a host's own names can be wider (VMD: 10000+).
        domain_limit = 0xFFFFFFFF if kind == "PCI address" else 0xFFFF
        domain = _hex_field(parts[0], "domain", domain_limit, source, kind) if len(parts) == 3 else 0
        bus = _hex_field(parts[-2], "bus", 0xFF, source, kind)
        slot_text, _, func_text = parts[-1].partition(".")
        if slot_text == "*":
            if func_text != "*":
                raise InputError(f"invalid {kind} {source!r}: a '*' slot needs a '*' function")
            return cls(domain, bus, None, None)
        slot = _hex_field(slot_text, "slot", 0x1F, source, kind)
        if func_text == "*":
            return cls(domain, bus, slot, None)
        if len(func_text) != 1 or func_text not in "01234567":
            raise InputError(f"invalid {kind} {source!r}: function {func_text!r} is not 0-7 or '*'")
        return cls(domain, bus, slot, int(func_text))

    @classmethod
    def parse_selector(cls, text: str) -> BdfPattern:
        """lspci's ``-s [[[DDDD]:]BB]:][SS][.[F]]``: any part may be left out (or ``*``) to
        match every value: ``03:00`` is every function of slot 03:00, ``03:`` all of bus 03,
        ``:00.0`` function 0 of slot 00 on every bus, ``00.0`` the same, ``.1`` every function 1.
        Unlike lspci, a left-out domain is 0000 (as in xl and the kernel's hide list), unless
        the bus is left out too."""
        source = text
        kind = "device selector"
        value = text.strip()
        if not value:
            raise InputError(f"invalid {kind} '': give [[[DDDD]:]BB]:][SS][.[F]] (lspci -s)")
        head, colon, tail = value.rpartition(":")
        domain: int | None = 0
        bus: int | None = None
        if colon:
            domain_text, colon2, bus_text = head.partition(":")
            if not colon2:
                domain_text, bus_text = "", domain_text
            if ":" in bus_text:
                raise InputError(f"invalid {kind} {source!r}: too many ':' "
                                 "(expected [[[DDDD]:]BB]:][SS][.[F]])")
            bus = _wild_field(bus_text, "bus", 0xFF, source, kind)
            if colon2:
                domain = _wild_field(domain_text, "domain", 0xFFFFFFFF, source, kind)
            elif bus is None:
                domain = None
        else:
            domain = None
        slot_text, dot, func_text = tail.partition(".")
        slot = _wild_field(slot_text, "slot", 0x1F, source, kind)
        function = None
        if dot:
            function = _wild_field(func_text, "function", 7, source, kind)
        return cls(domain, bus, slot, function)

    @property
    def is_wildcard(self) -> bool:
        return self.slot is None or self.function is None or self.bus is None or self.domain is None

    @property
    def hide_list_form(self) -> bool:
        """Whether the kernel's hide list, pciback's slots and the persisted config can hold it:
        an exact domain and bus (only slot and function may be wildcards)."""
        return (self.domain is not None and self.bus is not None
                and not (self.slot is None and self.function is not None))

    def matches(self, bdf: Bdf) -> bool:
        return ((self.domain is None or bdf.domain == self.domain)
                and (self.bus is None or bdf.bus == self.bus)
                and (self.slot is None or bdf.slot == self.slot)
                and (self.function is None or bdf.function == self.function))

    def select(self, bdfs: Iterable[Bdf]) -> list[Bdf]:
        """The addresses among ``bdfs`` this pattern names, sorted."""
        return sorted(b for b in bdfs if self.matches(b))

    def as_bdf(self) -> Bdf | None:
        if self.slot is None or self.function is None or self.domain is None or self.bus is None:
            return None  # a wildcard
        return Bdf(self.domain, self.bus, self.slot, self.function)

    def __str__(self) -> str:
        domain = "*" if self.domain is None else f"{self.domain:04x}"
        bus = "*" if self.bus is None else f"{self.bus:02x}"
        slot = "*" if self.slot is None else f"{self.slot:02x}"
        func = "*" if self.function is None else f"{self.function:x}"
        return f"{domain}:{bus}:{slot}.{func}"


def _wild_field(text: str, what: str, limit: int, source: str, kind: str) -> int | None:
    """One lspci selector field: empty or ``*`` matches anything, otherwise hex up to ``limit``."""
    if text in ("", "*"):
        return None
    return _hex_field(text, what, limit, source, kind)


@dataclass(frozen=True)
class IdSelector:
    """lspci's ``-d [VENDOR]:[DEVICE][:CLASS[:PROGIF]]``; ``None`` (an empty part or ``*``)
    matches anything. CLASS is the 16-bit base class and subclass (``0200``, ``0108``)."""

    vendor: int | None = None
    device: int | None = None
    class_code: int | None = None  # 16 bits: base class << 8 | subclass
    prog_if: int | None = None

    @classmethod
    def parse(cls, text: str) -> IdSelector:
        source = text
        kind = "device ID selector"
        parts = text.strip().split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise InputError(f"invalid {kind} {source!r}: expected VENDOR:DEVICE[:CLASS[:PROGIF]] "
                             "(hex; an empty part matches any, as in lspci -d)")
        vendor = _wild_field(parts[0], "vendor", 0xFFFF, source, kind)
        device = _wild_field(parts[1], "device", 0xFFFF, source, kind)
        class_code = _wild_field(parts[2], "class", 0xFFFF, source, kind) if len(parts) > 2 else None
        prog_if = _wild_field(parts[3], "programming interface", 0xFF, source, kind) if len(parts) > 3 else None
        return cls(vendor, device, class_code, prog_if)

    def matches(self, vendor_id: int, device_id: int, class_code: int) -> bool:
        """``class_code`` is the device's 24-bit class (base, subclass, programming interface)."""
        return ((self.vendor is None or vendor_id == self.vendor)
                and (self.device is None or device_id == self.device)
                and (self.class_code is None or class_code >> 8 == self.class_code)
                and (self.prog_if is None or class_code & 0xFF == self.prog_if))

    def __str__(self) -> str:
        parts = ["" if self.vendor is None else f"{self.vendor:04x}",
                 "" if self.device is None else f"{self.device:04x}"]
        if self.class_code is not None or self.prog_if is not None:
            parts.append("" if self.class_code is None else f"{self.class_code:04x}")
        if self.prog_if is not None:
            parts.append(f"{self.prog_if:02x}")
        return ":".join(parts)


def parse_bool(value: str, key: str, source: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InputError(f"invalid PCI spec {source!r}: {key}={value!r} is not a boolean "
                     "(use 0/1, yes/no or true/false)")


@dataclass(frozen=True)
class PciSpec:
    """One parsed xl PCI_SPEC_STRING. Exactly one of ``target`` or ``name`` is set."""

    target: BdfPattern | None = None
    name: str | None = None
    vslot: int | None = None
    permissive: bool = False
    msitranslate: bool = False
    seize: bool = False
    power_mgmt: bool = False
    rdm_policy: str | None = None
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def bdf(self) -> Bdf | None:
        return self.target.as_bdf() if self.target else None

    def format(self) -> str:
        """The canonical spelling xl accepts (only keys that were given or differ from defaults)."""
        parts: list[str] = []
        if self.target is not None:
            head = str(self.target)
            if self.vslot is not None:
                head += f"@{self.vslot:02x}"
            parts.append(head)
        else:
            parts.append(f"name={self.name}")
            if self.vslot is not None:
                parts.append(f"vslot={self.vslot:02x}")
        for key in BOOLEAN_KEYS:
            if key in self.given or getattr(self, key):
                parts.append(f"{key}={int(getattr(self, key))}")
        if self.rdm_policy is not None:
            parts.append(f"rdm_policy={self.rdm_policy}")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.format()


def _parse_vslot(text: str, source: str) -> int:
    return _hex_field(text, "vslot", 0x1F, source, "PCI spec")


def parse_pci_spec(text: str) -> PciSpec:
    """Parse xl's ``[<bdf>[@<vslot>]][,<key>=<value>]*`` (see xl-pci-configuration(5))."""
    source = text
    items = [item.strip() for item in text.strip().split(",")]
    if not text.strip():
        raise InputError("invalid PCI spec '': it is empty (expected [DDDD:]BB:DD.F[@VSLOT][,key=value...])")
    values: dict[str, str] = {}
    for position, item in enumerate(items):
        if not item:
            raise InputError(f"invalid PCI spec {source!r}: empty item at position {position + 1}")
        key, sep, value = item.partition("=")
        if not sep:
            if position != 0:
                raise InputError(f"invalid PCI spec {source!r}: {item!r} is not key=value "
                                 "(only the first item may be a bare address)")
            bdf_text, at, vslot_text = item.partition("@")
            values["bdf"] = bdf_text
            if at:
                values["vslot"] = vslot_text
            continue
        key = key.strip().lower()
        if key not in SPEC_KEYS:
            raise InputError(f"invalid PCI spec {source!r}: unknown option {key!r} "
                             f"(known: {', '.join(SPEC_KEYS)})")
        if key in values:
            raise InputError(f"invalid PCI spec {source!r}: {key!r} is given twice")
        if key == "bdf" and "@" in value:
            value, _, values["vslot"] = value.partition("@")
        values[key] = value.strip()
    if ("bdf" in values) == ("name" in values):
        raise InputError(f"invalid PCI spec {source!r}: give exactly one of an address or name=")
    target = None
    if "bdf" in values:
        target = BdfPattern.parse(values["bdf"], kind="PCI spec")
        if target.slot is None:
            raise InputError(f"invalid PCI spec {source!r}: xl accepts only a function wildcard "
                             "(BB:DD.*), not a slot wildcard")
    name = values.get("name")
    if name is not None and not is_device_name(name):
        raise InputError(f"invalid PCI spec {source!r}: {DEVICE_NAME_RULE}")
    vslot = _parse_vslot(values["vslot"], source) if "vslot" in values else None
    if target is not None and target.function is None and vslot is None:
        raise InputError(f"invalid PCI spec {source!r}: a multi-function spec (BB:DD.*) needs a "
                         "vslot (@VSLOT)")
    rdm = values.get("rdm_policy")
    if rdm is not None:
        rdm = rdm.lower()
        if rdm not in RDM_POLICIES:
            raise InputError(f"invalid PCI spec {source!r}: rdm_policy {values['rdm_policy']!r} is "
                             "not strict or relaxed")
    flags = {key: parse_bool(values[key], key, source) for key in BOOLEAN_KEYS if key in values}
    return PciSpec(target=target, name=name, vslot=vslot, rdm_policy=rdm,
                   given=frozenset(values), **flags)


HIDE_PARAMETER = "xen-pciback.hide"


def parse_hide_list(text: str) -> list[BdfPattern]:
    """Parse the kernel's ``(BDF)(BDF)...`` list; a leading ``xen-pciback.hide=`` is allowed."""
    source = text
    value = text.strip()
    for prefix in (HIDE_PARAMETER + "=", "hide="):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    patterns: list[BdfPattern] = []
    position = 0
    while position < len(value):
        char = value[position]
        if char.isspace():
            position += 1
            continue
        if char != "(":
            raise InputError(f"invalid hide list {source!r}: expected '(' at character "
                             f"{position + 1}, found {char!r}")
        end = value.find(")", position)
        if end < 0:
            raise InputError(f"invalid hide list {source!r}: '(' at character {position + 1} "
                             "is never closed")
        patterns.append(BdfPattern.parse(value[position + 1:end], kind="hide list entry"))
        position = end + 1
    if not patterns:
        raise InputError(f"invalid hide list {source!r}: no (BDF) entries")
    return patterns


def format_hide_list(items: Iterable[Bdf | BdfPattern], *, parameter: bool = True) -> str:
    """``xen-pciback.hide=(0000:03:00.0)(...)`` for the given devices (order kept, no repeats)."""
    seen: list[str] = []
    for item in items:
        text = str(item)
        if text not in seen:
            seen.append(text)
    body = "".join(f"({text})" for text in seen)
    return f"{HIDE_PARAMETER}={body}" if parameter else body


def parse_device_patterns(texts: Iterable[str]) -> list[BdfPattern]:
    """Command-line device arguments: each a BDF, a wildcard pattern (``03:00.*``, ``03:*.*``)
    or one of lspci's ``-s`` forms (``03:00``, ``03:``, ``0000:03:00``, ``:00.0``)."""
    return [parse_device_selector(text) for text in texts]


def parse_device_selector(text: str) -> BdfPattern:
    """One device argument: xl's forms first, then lspci's partial ones. When neither fits, the
    message is the strict parser's for a full ``BB:DD.F``-looking text, lspci's otherwise."""
    try:
        return BdfPattern.parse(text)
    except InputError as strict:
        try:
            return BdfPattern.parse_selector(text)
        except InputError as partial:
            full = text.count(":") in (1, 2) and "." in text.rpartition(":")[2]
            raise (strict if full else partial) from None


#: xl's rule for a device name (``xl pci-assignable-add -n NAME``, libxl_pci.c: at most 64
#: characters, each ``isgraph``: printable ASCII, no space).
DEVICE_NAME_RULE = "name must be 1-64 visible characters (ASCII, no spaces)"


def is_device_name(text: str) -> bool:
    """Whether ``text`` is a device name xl would accept."""
    return 0 < len(text) <= 64 and all("!" <= c <= "~" for c in text)


def device_name(text: str) -> str:
    """``text`` as a device name; :class:`InputError` (exit 2) if xl would refuse it."""
    if not is_device_name(text):
        raise InputError(f"invalid device name {text[:70]!r}: {DEVICE_NAME_RULE}")
    return text
