"""The control socket's request parsing: a bad request gets one JSON error line, never a crash."""

import json
import selectors
import socket

from xenpciback_cli.engine.serve import Server, _ControlClient


def _ask(line: bytes) -> dict:
    server = Server(None, None, None, None)
    ours, theirs = socket.socketpair()
    try:
        theirs.setblocking(False)
        client = _ControlClient(theirs)
        server.selector.register(theirs, selectors.EVENT_READ, client)
        ours.sendall(line)
        server._read_control(client)
        ours.settimeout(2.0)
        return json.loads(ours.recv(65536))
    finally:
        ours.close()
        server.close()


def test_a_deeply_nested_request_is_answered_with_an_error():
    # json.loads raises RecursionError (not ValueError) on this: it used to escape the loop
    answer = _ask(b"[" * 3000 + b"\n")
    assert "error" in answer


def test_a_watch_path_with_a_non_ascii_digit_names_no_guest():
    from xenpciback_cli.engine.serve import _domid_of

    # '²'.isdigit() is True but int('²') raises: it used to end the loop
    assert _domid_of("/local/domain/0/backend/pci/\u00b2/state") is None
    assert _domid_of("/local/domain/0/backend/pci/7/state") == 7
