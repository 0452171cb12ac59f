"""``xen-pciback attach SPEC --domid N``: give a seized device to a guest, the way libxl does."""

from __future__ import annotations

import click


@click.command("attach")
@click.argument("spec", required=False)
@click.option("--domid", "-d", type=int, required=True, help="Guest domain id.")
@click.option("--vslot", metavar="HEX", default=None, help="Guest slot (0-1f), like SPEC@VSLOT.")
@click.option("--permissive/--no-permissive", default=None,
              help="Let the guest write any config register (caution).")
@click.option("--msitranslate/--no-msitranslate", default=None, help="Record msitranslate=1.")
@click.option("--power-mgmt/--no-power-mgmt", default=None, help="Record power_mgmt=1 (HVM).")
@click.option("--rdm-policy", type=click.Choice(["strict", "relaxed"], case_sensitive=False),
              default=None, help="Reserved-memory policy recorded for the device [strict].")
@click.option("--name", default=None, help="Attach the device given this name at assignable-add.")
@click.option("--seize", is_flag=True, default=None, help="Seize (hide) the device first if needed.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the guest during a hot-plug.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the hot-plug handshake.")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.pass_obj
def command(app: object, spec: str | None, domid: int, vslot: str | None,
            permissive: bool | None, msitranslate: bool | None, power_mgmt: bool | None,
            rdm_policy: str | None, name: str | None, seize: bool | None, timeout: float,
            no_wait: bool, socket_path: str | None) -> None:
    """Attach SPEC to guest --domid N, hot-plugging when the guest is running.

    SPEC is a PCI address or xl's PCI_SPEC_STRING, e.g. 03:00.0, 0000:03:00.0@4,permissive=1,
    or 03:00.*@4 (every function; needs a vslot). Options override what SPEC says. The device
    must be seized (see 'hide', or --seize) and attached to no other guest.
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.toolstack.attach import AttachSpec, attach
    from xenpciback_cli.toolstack.attach_spec import ParsedSpec, parse_attach_spec, parse_vslot
    from xenpciback_cli.toolstack.libxl_layout import PciOptions
    from xenpciback_cli.toolstack.session import host_of, open_xenstore, seizer_of

    parsed = parse_attach_spec(spec) if spec else ParsedSpec()
    if not spec and not name:
        raise InputError("give a device (SPEC) or --name")
    if vslot is not None:
        parsed.vslot = parse_vslot(vslot, vslot)
    if name is not None:
        if parsed.bdf is not None and spec:
            raise InputError("give either a device address or --name, not both")
        parsed.name = name

    def pick(flag: bool | None, value: bool | None) -> bool:
        return bool(flag if flag is not None else value)

    options = PciOptions(msitranslate=pick(msitranslate, parsed.msitranslate),
                         power_mgmt=pick(power_mgmt, parsed.power_mgmt),
                         permissive=pick(permissive, parsed.permissive),
                         rdm_policy=(rdm_policy or parsed.rdm_policy or "strict").lower())
    request = AttachSpec(domid, parsed.bdf, parsed.all_functions, parsed.vslot, options,
                         parsed.name, pick(seize, parsed.seize))
    host = host_of(app)
    term = terminal_for(app)
    with open_xenstore(app, socket_path) as client:
        result = attach(client, request, host=host, seize_fn=seizer_of(app, host) if host else None,
                        timeout=timeout, wait=not no_wait)
    if app.settings.json:  # type: ignore[attr-defined]
        term.json(result.to_json())
        return
    for bdf, index in zip(result.devices, result.indices):
        vdev = result.guest_addresses.get(bdf)
        where = f" at guest address {vdev}" if vdev else ""
        how = "hot-plugged into" if result.hotplug else "attached to"
        term.line(f"{bdf} {how} domain {domid} (backend entry {index}){where}")
    for note in result.notes:
        term.info(note)
