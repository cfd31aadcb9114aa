"""Run an ASGI app (a simulator, or the service itself) on a real port for a test.

Simulators are used over real HTTP, as the guide requires: `serve_app(app)` starts uvicorn in a
background thread on a free 127.0.0.1 port and yields its base URL; the server stops when the
context exits. The implementation is the product's own (`df_middleware.simulators.serving`), which
`df-middleware demo` uses too.
"""

from __future__ import annotations

from df_middleware.simulators.serving import free_port, serve_app

__all__ = ["free_port", "serve_app"]
