"""The HTTP server: uvicorn, with the bounds a server facing the internet needs and uvicorn lacks.

uvicorn (httptools) accepts request headers of any size and waits for them forever: one client
sending a request line a byte at a time, or a megabyte of headers, holds a connection and memory
for as long as it likes. `BoundedHttpToolsProtocol` adds two limits, both per connection:

- the request line and headers must arrive within `HTTP_HEADER_TIMEOUT_SECONDS` of the first byte
  of the request (or of the connection, for a client that connects and says nothing); otherwise
  the client gets `408` (or, if it sent nothing at all, the connection is closed);
- together they may hold at most `MAX_REQUEST_HEADER_BYTES`; beyond that the client gets `431`
  and the connection is closed, before the rest is read.

A body that stalls is the application's concern (`request_guard.RequestGuard`: 408), and an idle
keep-alive connection is closed after `HTTP_KEEP_ALIVE_SECONDS` by uvicorn itself.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from df_middleware.config import Settings


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may take (see the module docstring); the values come from Settings."""

    header_timeout_seconds: float
    max_header_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(settings.http_header_timeout_seconds, settings.max_request_header_bytes)


#: The attribute of uvicorn's Config that carries the limits to the protocol (Config is pickled
#: to the processes of `serve --workers N`, so the limits travel with it).
_CONFIG_ATTRIBUTE = "df_http_limits"


class _HeadersTooLarge(Exception):
    """Raised inside httptools' header callback; httptools turns it into a parser error."""


def _plain_response(status: int, reason: str, text: str) -> bytes:
    """An answer the protocol gives itself (no request reached the application): it still carries
    a request id, like every answer, so that a sender can quote it."""
    body = text.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nx-request-id: {uuid.uuid4().hex}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline (408) and a header size limit (431)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # `server_config` is the one way this protocol is configured: it always sets the limits.
        self._limits: HttpLimits = getattr(config, _CONFIG_ATTRIBUTE)
        self._header_bytes = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_started = False
        self._headers_too_large = False

    # --- the header deadline ------------------------------------------------------------------
    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self._limits.header_timeout_seconds, self._header_deadline_passed
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._request_started:
            self.transport.write(
                _plain_response(408, "Request Timeout", "request headers not received in time")
            )
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_started = True
        self._header_bytes = 0
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        self._request_started = False
        super().on_headers_complete()

    # --- the header size limit ----------------------------------------------------------------
    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLarge()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_response_complete(self) -> None:
        """A response sent before its request's body was fully received (a 413 on Content-Length,
        a 401, a 404 for a body nobody reads) ends the connection: the parser is still inside that
        body, so further bytes would start no request and arm no deadline, and a client could hold
        the connection forever by trickling them."""
        cycle = self.cycle
        super().on_response_complete()
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._disarm_header_deadline()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._headers_too_large:
            return  # the 431 is sent and the connection closing: read nothing more
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every parser error with 400, including the one our size limit raises
        inside the header callback: that one deserves its own status."""
        if self._headers_too_large:
            self._disarm_header_deadline()
            limit = self._limits.max_header_bytes
            self.transport.write(
                _plain_response(431, "Request Header Fields Too Large", f"request headers over {limit} bytes")
            )
            self.transport.close()
            return
        super().send_400_response(msg)


def server_config(
    app: Any, settings: Settings, *, host: str, port: int, workers: int = 1, factory: bool = False
) -> uvicorn.Config:
    """uvicorn's Config for the service: bounded protocol, keep-alive timeout, no access log
    (the service logs what matters itself, masked)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        http=BoundedHttpToolsProtocol,
        timeout_keep_alive=int(max(1, round(settings.http_keep_alive_seconds))),
        log_config=None,
        access_log=False,
    )
    setattr(config, _CONFIG_ATTRIBUTE, HttpLimits.from_settings(settings))
    return config


def run_server(config: uvicorn.Config) -> bool:
    """Run until stopped, as `uvicorn.run` does with its own Config: one process, or
    `config.workers` processes sharing one socket. False when a single server failed to start."""
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            sock: socket.socket = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
            return True
        server.run()
    except KeyboardInterrupt:
        pass
    return server.started
