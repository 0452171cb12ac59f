"""``xen-pciback attach SPEC --domid N``: give a seized device to a guest, the way libxl does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("attach")
@click.argument("words", metavar="[DOMAIN] SPEC", nargs=-1)
@click.option("--domid", "-d", metavar="DOMAIN", default=None,
              help="Guest domain id or name (or give DOMAIN first, as 'xl pci-attach').")
@click.option("--vslot", metavar="HEX", default=None, help="Guest slot (0-1f), like SPEC@VSLOT.")
@click.option("--permissive/--no-permissive", default=None,
              help="Let the guest write any config register (caution).")
@click.option("--quirk", "quirks", multiple=True, metavar="REG:SIZE:MASK",
              help="Let the guest write register REG (hex, SIZE 1/2/4 bytes) under MASK; repeatable.")
@click.option("--msitranslate/--no-msitranslate", default=None, help="Record msitranslate=1.")
@click.option("--power-mgmt/--no-power-mgmt", default=None, help="Record power_mgmt=1 (HVM).")
@click.option("--rdm-policy", type=click.Choice(["strict", "relaxed"], case_sensitive=False),
              default=None, help="Reserved-memory policy recorded for the device [strict].")
@click.option("--name", default=None, help="Attach the device given this name at assignable-add.")
@click.option("--seize", is_flag=True, default=None, help="Seize (hide) the device first if needed.")
@click.option("--timeout", type=Seconds(), default=10.0, show_default=True,
              help="Seconds to wait for the guest during a hot-plug.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the hot-plug handshake.")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.option("--dry-run", is_flag=True, help="Check everything and say whether it would change; write nothing.")
@click.pass_obj
def command(app: Application, words: tuple[str, ...], domid: str | None, vslot: str | None,
            permissive: bool | None, quirks: tuple[str, ...], msitranslate: bool | None, power_mgmt: bool | None,
            rdm_policy: str | None, name: str | None, seize: bool | None, timeout: float,
            no_wait: bool, socket_path: str | None, dry_run: bool) -> None:
    """Attach SPEC to guest DOMAIN (an id or a name), hot-plugging when the guest is running.

    As 'xl pci-attach DOMAIN SPEC' (or --domid DOMAIN). SPEC is a PCI address or xl's
    PCI_SPEC_STRING, e.g. 03:00.0, 0000:03:00.0@4,permissive=1, name=NAME, or 03:00.*@4 (every
    function; needs a vslot). Options override what SPEC says. The device must be seized (see
    'hide', or --seize) and attached to no other guest. A PV guest's pciback picks the guest
    slot itself: @VSLOT is recorded as libxl does, and said to be ignored. Already attached to
    this guest is nothing to do (exit 0; JSON "changed": false).
    """
    from dataclasses import replace

    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.attach import attach, build_spec, domain_id
    from xenpciback_cli.engine.session import host_of, seizer_of

    domain, spec = domain_and_spec(words, domid, spec_optional=name is not None)
    request = build_spec(spec, name=name, vslot=vslot, permissive=permissive, msitranslate=msitranslate,
                         power_mgmt=power_mgmt, rdm_policy=rdm_policy, seize=seize, quirks=quirks)
    host = host_of(app)
    term = terminal_for(app)
    with app.open_xenstore(socket_path) as client:
        number = domain_id(client, domain)
        result = attach(client, replace(request, domid=number), host=host,
                        seize_fn=seizer_of(app, host) if host else None, timeout=timeout,
                        wait=not no_wait, state_dir=str(app.state_dir), dry_run=dry_run,
                        grants=app.domain_grants())
    if app.settings.json:
        term.json(result.to_json())
        return
    if dry_run or not result.changed:
        for note in result.notes:
            term.line(note)
        return
    from xenpciback_cli.pci.address import guest_address

    for bdf, index in zip(result.devices, result.indices):
        vdev = guest_address(result.guest_addresses.get(bdf))
        where = f" at guest address {vdev}" if vdev else ""
        how = "hot-plugged into" if result.hotplug else "attached to"
        term.line(f"{bdf} {how} domain {number} (backend entry {index}){where}")
        if bdf in result.permissive_applied:
            term.info(f"{bdf}: permissive (the guest may write any config register)")
        if result.grants.get(bdf):
            term.info(f"{bdf}: domain {number} granted {', '.join(g.describe() for g in result.grants[bdf])}")
        if result.quirks_applied.get(bdf):
            term.info(f"{bdf}: quirks {', '.join(map(str, result.quirks_applied[bdf]))} "
                      "(guest-writable under their masks until it lets the device go)")
    for note in result.notes:
        term.info(note)


def domain_and_spec(words: tuple[str, ...], domid: str | None, *,
                    spec_optional: bool = False) -> tuple[str, str | None]:
    """xl's order (``DOMAIN SPEC``) or ``SPEC --domid DOMAIN``: the domain once, then the spec."""
    from xenpciback_cli.errors import InputError

    if len(words) > 2:
        raise InputError(f"too many arguments: {' '.join(words[2:])!r} (give [DOMAIN] SPEC)")
    if len(words) == 2 or (len(words) == 1 and spec_optional and domid is None):
        if domid is not None:
            raise InputError("give the domain once: DOMAIN SPEC or SPEC --domid DOMAIN")
        return words[0], words[1] if len(words) == 2 else None
    if domid is None:
        raise InputError("give the domain: DOMAIN SPEC (as 'xl pci-attach') or --domid DOMAIN")
    return domid, words[0] if words else None
