"""pyweave.serving.Quiet: socketserver's loop that wakes only for a request or for shutdown()."""

import socket
import socketserver
import threading
import time

from polling import wait_for

from pyweave.serving import Quiet


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class CountingServer(Quiet, socketserver.UDPServer):
    """Counts the loop's turns: socketserver's own loop turns every poll_interval even when idle."""

    turns = 0

    def service_actions(self) -> None:
        self.turns += 1


def test_it_serves_sleeps_when_idle_and_stops_at_once():
    server = CountingServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"hello", server.server_address)
            assert client.recvfrom(64)[0] == b"hello"
        wait_for(lambda: server.turns == 1, timeout=5, message="the loop's turn after the request")
        time.sleep(0.3)  # idle: socketserver's own loop would turn ~30 times at this poll_interval
        assert server.turns == 1
    finally:
        started = time.monotonic()
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0


def test_shutdown_of_a_server_that_never_served_returns():
    server = CountingServer(("127.0.0.1", 0), Echo)
    server.shutdown()
    server.server_close()
