"""Opening the connection to the broker: TCP, then TLS when configured, with Nagle's algorithm off.

Shared by ``client.Client`` and the router's driver, so both reach a broker the same way.
"""

from __future__ import annotations

import socket
import ssl

from ..core.config import BrokerSettings


def tls_context(broker: BrokerSettings) -> ssl.SSLContext:
    """The broker's certificate is required and checked against ``tls.ca_certs`` (else the system's CAs) and
    the host name; ``tls.certfile``/``keyfile`` are our client certificate when given."""
    assert broker.tls is not None
    context = ssl.create_default_context(cafile=broker.tls.ca_certs)
    context.verify_mode = ssl.CERT_REQUIRED
    if broker.tls.certfile is not None:
        context.load_cert_chain(broker.tls.certfile, broker.tls.keyfile)
    return context


def open_socket(broker: BrokerSettings, timeout: float, receive_buffer: int | None = None) -> socket.socket:
    """A connected socket to ``broker`` (TLS-wrapped, handshake done, when ``broker.tls`` is set), in
    blocking mode with ``timeout``; raises OSError (ssl.SSLError included) when it cannot be opened.
    ``receive_buffer`` caps the kernel's receive buffer (what the broker counts as delivered while it waits
    there unread)."""
    sock = socket.create_connection((broker.host, broker.port), timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a small packet must not wait for an ACK
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if broker.tls is not None:
            sock = tls_context(broker).wrap_socket(sock, server_hostname=broker.host)
    except BaseException:
        sock.close()
        raise
    return sock
