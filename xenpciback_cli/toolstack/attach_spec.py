"""xl's PCI_SPEC_STRING for ``attach``: ``[DDDD:]BB:DD.F|*[@VSLOT][,key=value]...``.

Grammar from ``xl-pci-configuration.5.pod`` / ``libxlu_pci.c`` (``toolstack-and-peers.md`` §A3):
positional ``bdf`` then ``@vslot`` (hex, 0-0x1f), then ``key=value`` pairs, each key at most once:
``bdf``, ``vslot``, ``permissive``, ``msitranslate``, ``seize``, ``power_mgmt``, ``rdm_policy``
(strict|relaxed, any case), ``name``. Exactly one of ``bdf`` and ``name``. Unlike xl's ``atoi``,
booleans are 0/1/yes/no/true/false/on/off and anything else is an error, so ``permissive=yes``
does not silently mean 0. Every error names the spec and the part that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf

_BDF = re.compile(r"^(?:(?P<d>[0-9a-fA-F]{1,4}):)?(?P<b>[0-9a-fA-F]{1,2}):(?P<s>[0-9a-fA-F]{1,2})"
                  r"\.(?P<f>[0-7*])$")
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
KEYS = ("bdf", "vslot", "permissive", "msitranslate", "seize", "power_mgmt", "rdm_policy", "name")


@dataclass
class ParsedSpec:
    bdf: Bdf | None = None
    all_functions: bool = False
    vslot: int | None = None
    permissive: bool | None = None
    msitranslate: bool | None = None
    seize: bool | None = None
    power_mgmt: bool | None = None
    rdm_policy: str | None = None
    name: str | None = None


def _bad(spec: str, why: str) -> InputError:
    return InputError(f"invalid PCI spec {spec!r}: {why}")


def parse_bdf(spec: str, text: str) -> tuple[Bdf, bool]:
    match = _BDF.match(text.strip())
    if not match:
        raise _bad(spec, f"{text!r} is not a PCI address ([DDDD:]BB:DD.F, F may be *)")
    slot = int(match["s"], 16)
    if slot > 0x1F:
        raise _bad(spec, f"slot {slot:#x} in {text!r} is above 0x1f")
    wildcard = match["f"] == "*"
    return Bdf(int(match["d"] or "0", 16), int(match["b"], 16), slot,
               0 if wildcard else int(match["f"])), wildcard


def parse_vslot(spec: str, text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise _bad(spec, f"vslot {text!r} is not hex (0-1f)") from None
    if not 0 <= value <= 0x1F:
        raise _bad(spec, f"vslot {text!r} is out of range (0-1f)")
    return value


def parse_bool(spec: str, key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _bad(spec, f"{key}={text!r} is not a boolean (0/1/yes/no/true/false)")


def parse_attach_spec(spec: str) -> ParsedSpec:
    out = ParsedSpec()
    if not spec.strip():
        raise _bad(spec, "empty")
    parts = spec.split(",")
    seen: set[str] = set()
    first = parts[0]
    if "=" not in first:
        head, at, vslot = first.partition("@")
        out.bdf, out.all_functions = parse_bdf(spec, head)
        seen.add("bdf")
        if at:
            out.vslot = parse_vslot(spec, vslot)
            seen.add("vslot")
        parts = parts[1:]
    for part in parts:
        if not part:
            continue  # xl tolerates a trailing comma
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise _bad(spec, f"{part!r} is not key=value")
        if key not in KEYS:
            raise _bad(spec, f"unknown option {key!r} (known: {', '.join(KEYS)})")
        if key in seen:
            raise _bad(spec, f"{key} given twice")
        seen.add(key)
        if key == "bdf":
            out.bdf, out.all_functions = parse_bdf(spec, value)
        elif key == "vslot":
            out.vslot = parse_vslot(spec, value)
        elif key == "rdm_policy":
            if value.strip().lower() not in ("strict", "relaxed"):
                raise _bad(spec, f"rdm_policy={value!r} must be strict or relaxed")
            out.rdm_policy = value.strip().lower()
        elif key == "name":
            if not value or not all(c.isprintable() and not c.isspace() for c in value) \
                    or len(value) > 64:
                raise _bad(spec, f"name={value!r} must be 1-64 printable characters")
            out.name = value
        else:
            setattr(out, key, parse_bool(spec, key, value))
    if (out.bdf is None) == (out.name is None):
        raise _bad(spec, "give exactly one of a PCI address and name=")
    return out
