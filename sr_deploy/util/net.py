"""Checks of network addresses given on the command line, before a client library is handed them."""

from __future__ import annotations

import socket

from ..errors import InputError


def check_reachable(address: str | None, option: str, timeout: float = 10.0) -> None:
    """InputError (exit 2, one line naming `option`) within about `timeout` seconds when
    `address` (``HOST:PORT`` or ``SCHEME://HOST:PORT``) names a host that does not resolve or a
    port where nothing listens (ray.init would otherwise retry for minutes with pages of logs).
    None, ``auto`` and ``local`` pass unchecked."""

    if not address or address in ("auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InputError(f"{option} {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"{option} {address}: cannot resolve the host {host!r} ({exc.strerror or exc})") from None
    try:
        socket.create_connection((host, int(port_text)), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(f"{option} {address}: no Ray cluster answers at {host}:{port_text} ({reason})") from None
    if not _speaks_grpc(host, int(port_text), timeout):
        raise InputError(
            f"{option} {address}: something listens at {host}:{port_text} but does not answer as a Ray "
            "cluster (no gRPC): give the head's GCS port (ray start --head prints it, 6379 by default), "
            "or ray://HOST:10001; 8265 is the dashboard"
        )


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """A gRPC (HTTP/2) channel to `host:port` becomes ready within `timeout`: what Ray's GCS and
    its client server are. Anything else listening there (the dashboard's HTTP, another service)
    made ray.init retry for ever. True when grpc is not installed (nothing to check with)."""
    try:
        import grpc
    except ImportError:
        return True
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()
