"""xenstore over a character device, as over Linux's ``/dev/xen/xenbus``: a raw pty stands in
for the device file and a small thread on its master side answers as the kernel's
``xenbus_dev_frontend`` does (replies echo the request's header, a WATCH is answered "OK" and
its events come with req_id 0). Discovery falls back to the device after the sockets, as
libxenstore's ``xs_open`` does (``xs_daemon_socket()``, then ``xs_domain_dev()``)."""

from __future__ import annotations

import os
import pty
import select
import threading
import tty

import pytest

from xenpciback_cli.xenstore import transport as xs_transport
from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.client import WatchEvent, XenstoreClient, XenstoreConnectionLost, connect
from xenpciback_cli.xenstore.wire import MessageType as T


class FakeXenbusDevice:
    """The kernel's side of a xenbus device file, on a pty master."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes pass as they are
        # The client opens the device by path, as it would /dev/xen/xenbus; our slave descriptor
        # stays open only so the master never sees a hang-up (EIO) between two clients.
        self.path = os.ttyname(self._slave)
        self.store: dict[str, bytes] = {}
        self.seen: list[tuple[int, int]] = []  # (type, req_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _send(self, msg_type: int, req_id: int, payload: bytes) -> None:
        data = wire.encode(msg_type, req_id, 0, payload)
        while data:
            data = data[os.write(self.master, data):]

    def _run(self) -> None:
        decoder = wire.Decoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                decoder.feed(os.read(self.master, 4096))
            except OSError:
                return
            for msg in decoder:
                self.seen.append((msg.type, msg.req_id))
                parts = msg.payload.split(b"\0")
                if msg.type == T.WRITE:
                    path, _, value = msg.payload.partition(b"\0")
                    self.store[path.decode()] = value
                    self._send(T.WRITE, msg.req_id, b"OK\0")
                elif msg.type == T.READ:
                    path = parts[0].decode()
                    if path in self.store:
                        self._send(T.READ, msg.req_id, self.store[path])
                    else:
                        self._send(T.ERROR, msg.req_id, b"ENOENT\0")
                elif msg.type == T.WATCH:
                    self._send(T.WATCH, msg.req_id, b"OK\0")
                    self._send(T.WATCH_EVENT, 0, parts[0] + b"\0" + parts[1] + b"\0")
                else:
                    self._send(T.ERROR, msg.req_id, b"EINVAL\0")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def device():
    dev = FakeXenbusDevice()
    yield dev
    dev.close()


def test_the_client_speaks_the_wire_protocol_over_a_character_device(device):
    with XenstoreClient.open_device(device.path, timeout=2) as xs:
        assert not xs.transport.path.endswith("socket")
        xs.write("/local/domain/0/backend/pci/1/0/state", "2")
        assert xs.read("/local/domain/0/backend/pci/1/0/state") == b"2"
        xs.watch("/local/domain/1/device/pci/0/state", "fe")
        assert xs.next_event(2) == WatchEvent("/local/domain/1/device/pci/0/state", "fe")
        with pytest.raises(Exception, match="ENOENT"):
            xs.read("/nope")
    req_ids = [r for _, r in device.seen]
    assert len(set(req_ids)) == len(req_ids)  # each request its own id, matched on the reply


def test_discovery_falls_back_to_the_device_after_the_sockets(device, tmp_path, monkeypatch):
    monkeypatch.setattr(xs_transport, "DEFAULT_SOCKETS", (str(tmp_path / "run" / "socket"),))
    monkeypatch.setattr(xs_transport, "DEVICE_PATHS", (device.path, str(tmp_path / "proc-xenbus")))
    env = {"XENSTORED_RUNDIR": str(tmp_path / "rundir")}
    assert xs_transport.candidate_paths(env) == [
        str(tmp_path / "rundir" / "socket"), str(tmp_path / "run" / "socket"), device.path,
        str(tmp_path / "proc-xenbus")]
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setenv("XENSTORED_RUNDIR", str(tmp_path / "rundir"))
    with connect() as xs:
        assert xs.path == device.path
        xs.write("/a", "b")
        assert xs.read("/a") == b"b"


def test_xenstored_path_may_name_the_device_outright(device, monkeypatch):
    monkeypatch.setenv("XENSTORED_PATH", device.path)
    with connect() as xs:
        xs.write("/k", "v")
        assert xs.read("/k") == b"v"


def test_opening_the_device_does_not_make_it_our_controlling_terminal(device):
    """O_NOCTTY: a session leader without a terminal (a systemd service is one) opening a
    tty-like device must not acquire it; harmless for the real xenbus device."""
    import subprocess
    import sys

    probe = ("import os, sys\n"
             "from xenpciback_cli.xenstore.transport import Transport\n"
             "t = Transport.open(sys.argv[1])\n"
             "try:\n    os.close(os.open('/dev/tty', os.O_RDWR)); print('acquired')\n"
             "except OSError:\n    print('none')\n")
    run = subprocess.run([sys.executable, "-c", probe, device.path], capture_output=True,
                         text=True, timeout=30, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.stdout.strip() == "none", run.stderr


def test_a_silent_device_times_out(tmp_path):
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        client = XenstoreClient.open_device(os.ttyname(slave), timeout=0.2)
        with pytest.raises(XenstoreConnectionLost, match="no reply"):
            client.read("/x")
        client.close()
    finally:
        os.close(master)
        os.close(slave)
