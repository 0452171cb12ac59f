"""sd_notify by hand: READY=1 as one datagram to $NOTIFY_SOCKET, abstract names with '@'."""

import socket

from xenpciback_cli.engine.serve import notify_ready


def test_ready_datagram_to_a_path_and_to_an_abstract_socket(tmp_path):
    path = tmp_path / "notify"
    for name, address in ((str(path), str(path)), ("@xpb-test-notify", "\0xpb-test-notify")):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(2)
        try:
            assert notify_ready({"NOTIFY_SOCKET": name})
            assert sock.recv(64) == b"READY=1"
        finally:
            sock.close()
    assert not notify_ready({})
