"""The real-Xen transport driven against stand-ins for the two device files: a regular file for
gntdev (mmap works on it the same way) and a socketpair for evtchn (4-byte ports read and written
back), with a fake ioctl that checks each request number and buffer as the kernel would read it."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from xenpciback_cli.backend.ports import TransportError
from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.transport.xen import XenTransport, real_xen_adapters


class FakeKernel:
    """Plays gntdev and evtchn: answers the ioctls, records every call."""

    def __init__(self, tmp_path) -> None:
        self.calls: list[tuple[str, int, bytes]] = []
        self.gntdev_file = tmp_path / "gntdev"
        self.gntdev_file.write_bytes(bytes(abi.PAGE_SIZE * 4))
        self.gntdev_fd = -1
        self.peers: dict[int, socket.socket] = {}  # evtchn fd -> the "kernel" end
        self._keep: list[socket.socket] = []
        self.next_index = abi.PAGE_SIZE * 2
        self.next_port = 40
        self.fail: dict[int, int] = {}  # request -> errno

    def open(self, path: str, flags: int) -> int:
        if path.endswith("gntdev"):
            self.gntdev_fd = os.open(self.gntdev_file, os.O_RDWR)
            return self.gntdev_fd
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert flags & os.O_NONBLOCK
        ours.setblocking(False)
        kernel.settimeout(2)
        fd = ours.detach()
        self.peers[fd] = kernel
        return fd

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        self.calls.append((self.name(request), fd, bytes(buf)))
        if request in self.fail:
            raise OSError(self.fail[request], os.strerror(self.fail[request]))
        if request == abi.IOCTL_GNTDEV_MAP_GRANT_REF:
            assert len(buf) == 24
            count, _pad, _index, _domid, _ref = struct.unpack("=IIQII", buf)
            assert count == 1
            struct.pack_into("=Q", buf, 8, self.next_index)
            return 0
        if request == abi.IOCTL_EVTCHN_BIND_INTERDOMAIN:
            port = self.next_port
            self.next_port += 1
            return port
        return 0

    @staticmethod
    def name(request: int) -> str:
        return next(k for k, v in vars(abi).items() if k.startswith("IOCTL_") and v == request)


@pytest.fixture
def kernel(tmp_path):
    k = FakeKernel(tmp_path)
    yield k
    for s in k.peers.values():
        s.close()


@pytest.fixture
def transport(kernel):
    t = XenTransport(gntdev_path="/dev/xen/gntdev", evtchn_path="/dev/xen/evtchn",
                     ioctl=kernel.ioctl, opener=kernel.open)
    yield t
    t.close()


def test_map_grant_packs_the_request_and_maps_at_the_returned_index(kernel, transport):
    kernel.gntdev_file.write_bytes(bytes(abi.PAGE_SIZE * 2) + b"\x5a" * abi.PAGE_SIZE
                                   + bytes(abi.PAGE_SIZE))
    mapping = transport.map_grant(7, 0x1234)
    assert kernel.calls == [("IOCTL_GNTDEV_MAP_GRANT_REF", kernel.gntdev_fd,
                             struct.pack("=IIQII", 1, 0, 0, 7, 0x1234))]
    assert len(mapping.page) == 4096
    assert bytes(mapping.page[:4]) == b"\x5a" * 4  # the page at the kernel's index, not at 0
    mapping.page[0:2] = b"ok"  # writable and shared
    mapping.close()
    assert kernel.gntdev_file.read_bytes()[2 * 4096:2 * 4096 + 2] == b"ok"
    assert kernel.calls[-1] == ("IOCTL_GNTDEV_UNMAP_GRANT_REF", kernel.gntdev_fd,
                                struct.pack("=QII", 2 * 4096, 1, 0))
    mapping.close()  # idempotent: no second unmap
    assert [c[0] for c in kernel.calls].count("IOCTL_GNTDEV_UNMAP_GRANT_REF") == 1


def test_close_refuses_while_a_slice_of_the_page_is_alive(kernel, transport):
    mapping = transport.map_grant(7, 8)
    view = mapping.page[16:32]
    with pytest.raises(TransportError, match="page 8 of domain 7 is still in use"):
        mapping.close()
    assert "IOCTL_GNTDEV_UNMAP_GRANT_REF" not in [c[0] for c in kernel.calls]
    mapping.page[0] = 1  # still mapped and usable
    view[0] = 2
    view.release()
    mapping.close()  # now it goes
    assert [c[0] for c in kernel.calls].count("IOCTL_GNTDEV_UNMAP_GRANT_REF") == 1


def test_a_refused_grant_is_a_transport_error_with_the_errno(kernel, transport):
    kernel.fail[abi.IOCTL_GNTDEV_MAP_GRANT_REF] = errno.EINVAL
    with pytest.raises(TransportError, match=r"mapping grant 9 of domain 3: EINVAL"):
        transport.map_grant(3, 9)


def test_out_of_range_arguments_never_reach_the_kernel(kernel, transport):
    for domid, ref in ((-1, 1), (0x7FF0, 1), (1, 1 << 32)):
        with pytest.raises(TransportError):
            transport.map_grant(domid, ref)
    with pytest.raises(TransportError):
        transport.bind_interdomain(1, 0)
    assert kernel.calls == []


def test_missing_device_file_is_a_transport_error():
    t = XenTransport(gntdev_path="/nonexistent/gntdev", evtchn_path="/nonexistent/evtchn")
    with pytest.raises(TransportError, match="opening /nonexistent/gntdev: ENOENT"):
        t.map_grant(1, 1)
    with pytest.raises(TransportError, match="opening /nonexistent/evtchn: ENOENT"):
        t.bind_interdomain(1, 5)


def test_bind_notify_drain_unbind(kernel, transport):
    channel = transport.bind_interdomain(5, 17)
    fd = channel.fileno()
    assert kernel.calls == [("IOCTL_EVTCHN_BIND_INTERDOMAIN", fd, struct.pack("=II", 5, 17))]
    assert channel.port == 40
    peer = kernel.peers[fd]

    assert channel.drain() == 0  # nothing pending: no block, nothing written back

    channel.notify()
    assert kernel.calls[-1] == ("IOCTL_EVTCHN_NOTIFY", fd, struct.pack("=I", 40))

    peer.sendall(struct.pack("=III", 40, 40, 40))  # three notifications coalesced in the ring
    assert channel.drain() == 3
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(64)  # still masked: the guest's next notify costs dom0 no interrupt
    channel.rearm()
    assert peer.recv(64) == struct.pack("=I", 40)  # written back once: unmasked
    channel.rearm()
    with pytest.raises(BlockingIOError):
        peer.recv(64)  # nothing read since: nothing to unmask
    peer.setblocking(True)

    channel.close()
    assert kernel.calls[-1] == ("IOCTL_EVTCHN_UNBIND", fd, struct.pack("=I", 40))
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor is closed
    channel.close()
    channel.notify()  # a closed channel's notify is a no-op, not a crash
    with pytest.raises(TransportError):
        channel.drain()


def test_ring_overflow_resets_and_counts(kernel, transport, monkeypatch):
    channel = transport.bind_interdomain(5, 17)
    real_read = os.read

    def overflowing(fd, n):
        if fd == channel.fileno():
            monkeypatch.setattr(os, "read", real_read)
            raise OSError(errno.EFBIG, "ring overflow")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", overflowing)
    assert channel.drain() == 1
    assert ("IOCTL_EVTCHN_RESET", channel.fileno(), b"") in kernel.calls
    channel.rearm()
    assert kernel.peers[channel.fileno()].recv(64) == struct.pack("=I", 40)
    channel.close()


def test_a_failed_bind_closes_its_descriptor(kernel, transport):
    kernel.fail[abi.IOCTL_EVTCHN_BIND_INTERDOMAIN] = errno.EINVAL
    with pytest.raises(TransportError, match="binding port 17 of domain 5: EINVAL"):
        transport.bind_interdomain(5, 17)
    (fd,) = kernel.peers
    with pytest.raises(OSError):
        os.fstat(fd)


def test_real_xen_adapters_open_nothing_until_used():
    transport, interrupts = real_xen_adapters("/nonexistent-sys")
    assert isinstance(transport, XenTransport)
    assert interrupts.sysfs_root == "/nonexistent-sys"
    assert interrupts.mapped() == {}
