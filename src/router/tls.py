"""TLS for the server and its clients: certificates from PEM files, reloaded on request.

The server's credentials are grpc's dynamic ones: grpc asks for the current certificate at each
new handshake, so `reload()` (SIGHUP) swaps in rotated files without dropping any connection; a
reload that fails (missing or mismatched files) keeps serving the old certificate and says why.
"""
from __future__ import annotations

import ipaddress
import logging
import pathlib
import socket
import threading
from collections.abc import Callable

import grpc
import msgspec

logger = logging.getLogger(__name__)


class TlsFiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Server side: `cert` and `key` (PEM) serve TLS; `client_ca` also requires client certificates
    signed by it (mTLS)."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


def check(files: TlsFiles) -> None:
    """ValueError naming the problem if the flags do not make sense together."""
    if bool(files.cert) != bool(files.key):
        raise ValueError("--tls-cert and --tls-key go together")
    if files.client_ca and not files.cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")


def _read(path: str, what: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror}") from None


def _configuration(files: TlsFiles) -> tuple[grpc.ServerCertificateConfiguration, float]:
    """grpc's configuration for the files, and when the certificate expires (unix time)."""
    key, cert = _read(files.key, "TLS key"), _read(files.cert, "TLS certificate")
    not_after = _check_pair(key, cert)
    ca = _read(files.client_ca, "client CA") if files.client_ca else None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca), not_after


def _check_pair(key_pem: bytes, cert_pem: bytes) -> float:
    """grpc would only fail at the next handshake: check here that the key belongs to the certificate.
    When the certificate expires (unix time)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        raise ValueError(f"cannot load the TLS certificate or key: {e}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise ValueError("the TLS key does not belong to the TLS certificate")
    return cert.not_valid_after_utc.timestamp()


class ServerTls:
    def __init__(self, files: TlsFiles) -> None:
        check(files)
        self._files = files
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        initial, self.not_after = _configuration(files)  # not_after: the served certificate's (unix time)
        self.reloaded: list[Callable[[], None]] = []  # called after each successful reload
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=bool(files.client_ca))

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # grpc calls this at each handshake: None keeps the current certificate.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Read the files again; new handshakes use them. False (logged) if they do not load."""
        try:
            configuration, not_after = _configuration(self._files)
        except ValueError as e:
            logger.error("TLS reload failed, still serving the previous certificate: %s", e,
                         extra={"event": "tls_reload_failed", "cert": self._files.cert})
            return False
        with self._lock:
            self._pending = configuration
            self.not_after = not_after
        for listener in self.reloaded:
            listener()
        logger.info("TLS certificate reloaded from %s", self._files.cert,
                    extra={"event": "tls_reloaded", "cert": self._files.cert, "not_after": self.not_after})
        return True


def client_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Trust `ca` (else the system's roots); present cert/key for mTLS."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA") if ca else None,
        private_key=_read(key, "TLS key") if key else None,
        certificate_chain=_read(cert, "TLS certificate") if cert else None)


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT listens on loopback only (names are resolved; any non-loopback address fails)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "*"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)
