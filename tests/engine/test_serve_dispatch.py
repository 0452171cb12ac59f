"""serve's per-op path in process: the device an op names is looked up once (by the session),
whatever serve does after the answer (trace line, MSI/MSI-X record, denied-write log)."""

from __future__ import annotations

from xenpciback_cli.engine.serve import Server
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import OP_END, OP_OFFSET, XEN_PCIF_ACTIVE
from xenpciback_cli.pv.codec import encode_op, read_op

from backend.test_backend_session import FakeInterrupts, config_space

HOST = Bdf(0, 3, 0, 0)


class CountingDevices(dict):
    """The session's device table, counting every lookup made through it."""

    lookups = 0

    def get(self, key, default=None):
        CountingDevices.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key):
        CountingDevices.lookups += 1
        return super().__getitem__(key)


class Channel:
    notified = 0

    def drain(self):
        return 1

    def rearm(self):
        pass

    def notify(self):
        self.notified += 1

    def fileno(self):
        return -1


class Mapping:
    def __init__(self):
        self.page = memoryview(bytearray(4096))


class Trace:
    def __init__(self):
        self.lines = []

    def op(self, record, host):
        self.lines.append((record.cmd, host))

    def text_of(self, host):
        return str(host)


def test_one_device_lookup_per_op_with_a_trace():
    trace = Trace()
    server = Server(None, None, FakeInterrupts(), None, trace=trace)
    try:
        guest = server._new_guest(7)
        guest.session.export(HOST, config_space())
        guest.session.devices = CountingDevices(guest.session.devices)
        guest.channel, guest.mapping = Channel(), Mapping()
        page = guest.mapping.page
        answers = []
        for op in (encode_op(0, 0, 0, 0, 0, 2), encode_op(1, 0, 0, 0, 0x2C, 2, 1),
                   encode_op(1, 0, 0, 0, 0x2C, 2, 2), encode_op(0, 0, 0, 9 << 3, 0, 4),
                   encode_op(2)):
            page[OP_OFFSET:OP_END] = op
            page[0] = XEN_PCIF_ACTIVE
            server.serve_one(guest)
            assert page[0] == 0 and guest.closed is None
            answer = read_op(page)
            answers.append((answer.err, answer.value))
        assert answers == [(0, 0x8086), (0, 1), (0, 2), (-1, 0), (0, 55)]
        assert trace.lines == [(0, str(HOST)), (1, str(HOST)), (1, str(HOST)), (0, None),
                               (2, str(HOST))]
        assert guest.channel.notified == 5 and guest.session.devices[(0, 0, 0)].msi_enabled
        CountingDevices.lookups -= 1  # the line above
        # the dropped writes were seen (and logged once) without a lookup of their own
        assert guest.writes_denied == 2
        assert CountingDevices.lookups == 0
    finally:
        server.close()
