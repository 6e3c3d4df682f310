"""The one channel factory for clients: plaintext, TLS or mutual TLS, message sizes, keepalive, metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from lipsync_service.errors import InvalidInput

SSL_MODES = ("DISABLED", "TLS", "MTLS")
SESSION_ID_METADATA_KEY = "client-session-id"
# Output chunks are small (256 KiB by default), but a server may be configured with bigger ones;
# the server's own request limit is 16 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# gRPC servers reject pings more frequent than every 5 minutes by default (too_many_pings GOAWAY), so
# the transport keepalive stays at that; the service's own keepalive messages keep proxies happy.
DEFAULT_KEEPALIVE_MS = 300_000
DEFAULT_KEEPALIVE_TIMEOUT_MS = 20_000


def normalize_ssl_mode(mode: str) -> str:
    """The canonical spelling of an SSL mode, accepting any case.

    Raises:
        InvalidInput: not one of DISABLED, TLS, MTLS.
    """
    upper = (mode or "DISABLED").strip().upper()
    if upper not in SSL_MODES:
        raise InvalidInput(f"ssl mode {mode!r} is not supported: use one of {', '.join(SSL_MODES)}")
    return upper


def _read(path: str | Path | None, what: str, flag: str) -> bytes:
    if not path:
        raise InvalidInput(f"{what} is required for this ssl mode: pass {flag}")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path} ({flag}): {exc.strerror or exc}") from exc


def channel_credentials(
    ssl_mode: str,
    *,
    root_cert: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> grpc.ChannelCredentials | None:
    """Credentials for a channel, or None for plaintext.

    Args:
        ssl_mode: DISABLED, TLS or MTLS (any case).
        root_cert: PEM file of the CA that signed the server certificate; the system roots when None.
        cert: PEM client certificate (MTLS only).
        key: PEM private key of the client certificate (MTLS only).

    Returns:
        grpc.ChannelCredentials for TLS/MTLS, None for DISABLED.

    Raises:
        InvalidInput: unknown mode, a missing or unreadable file.
    """
    mode = normalize_ssl_mode(ssl_mode)
    if mode == "DISABLED":
        return None
    root = _read(root_cert, "root certificate", "--ssl-root-cert") if root_cert else None
    if mode == "TLS":
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(key, "client private key", "--ssl-key"),
        certificate_chain=_read(cert, "client certificate", "--ssl-cert"),
    )


def channel_options(
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS,
    server_name: str | None = None,
) -> list[tuple[str, object]]:
    """gRPC channel options: message size limits, keepalive, round-robin balancing, optional TLS name override."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", DEFAULT_KEEPALIVE_TIMEOUT_MS),
        # With a name that resolves to many pods (a headless Service: dns:///name:8001) calls are spread
        # over all of them; pick_first, the default, would send every call to one pod.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if server_name:
        # For servers reached by an address that is not in their certificate (tests, port-forwards).
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def create_channel(
    target: str,
    *,
    ssl_mode: str = "DISABLED",
    root_cert: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    server_name: str | None = None,
) -> grpc.Channel:
    """A blocking gRPC channel to the service.

    Args:
        target: host:port of the service.
        ssl_mode: DISABLED, TLS or MTLS (any case).
        root_cert: CA certificate file (TLS/MTLS); the system roots when None.
        cert: client certificate file (MTLS).
        key: client private key file (MTLS).
        max_message_bytes: send and receive limit per message.
        server_name: expected name in the server certificate when it differs from the target host.

    Returns:
        An open grpc.Channel; close it when done.

    Raises:
        InvalidInput: bad ssl mode, missing or unreadable certificate files.
    """
    options = channel_options(max_message_bytes=max_message_bytes, server_name=server_name)
    creds = channel_credentials(ssl_mode, root_cert=root_cert, cert=cert, key=key)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def call_metadata(
    client_session_id: str | None = None, *, key: str = SESSION_ID_METADATA_KEY
) -> Sequence[tuple[str, str]]:
    """Request metadata for a call: the client session id when given (echoed back in service_info)."""
    return ((key, client_session_id),) if client_session_id else ()
