"""`simulate …`: one external system's simulator (SPEC §9) on a port of its own. The service never
imports the simulators; only these commands do, lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from df_middleware.cli.output import console

simulate_app = typer.Typer(
    help="Run a simulator of an external system (SPEC §9): in-memory state, faults, `/_sim` control routes.",
    no_args_is_help=True,
)


def _serve_simulator(application: Any, host: str, port: int) -> None:
    import uvicorn

    console.print(f"simulator on http://{host}:{port} (state: /_sim/state, faults: PUT /_sim/faults)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


SimHost = Annotated[str, typer.Option(help="Bind address.")]


@simulate_app.command("ghl")
def simulate_ghl(
    port: Annotated[int, typer.Option(help="Port.")] = 9100,
    host: SimHost = "127.0.0.1",
    openapi_dir: Annotated[
        Path | None, typer.Option(help="GHL's OpenAPI documents: validate every request with them.")
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where contact webhooks are sent.")] = None,
    provider_delivery_url: Annotated[
        str | None, typer.Option(help="Conversation provider Delivery URL (ProviderOutboundMessage).")
    ] = None,
    rate_limit_max: Annotated[int, typer.Option(help="Requests per window per location.")] = 100,
    rate_limit_interval: Annotated[float, typer.Option(help="Window length in seconds.")] = 10.0,
) -> None:
    """GHL API v2: contacts, notes, tags, conversations, users, custom fields and objects, OAuth.

    A location `loc_sim` with Private Integration Token `pit-sim` exists from the start.
    """
    from df_middleware.simulators.ghl import create_app as create_ghl

    application = create_ghl(
        openapi_dir=openapi_dir,
        webhook_url=webhook_url,
        provider_delivery_url=provider_delivery_url,
        rate_limit_max=rate_limit_max,
        rate_limit_interval_seconds=rate_limit_interval,
    )
    _serve_simulator(application, host, port)


@simulate_app.command("aloware")
def simulate_aloware(
    port: Annotated[int, typer.Option(help="Port.")] = 9101,
    host: SimHost = "127.0.0.1",
    api_token: Annotated[
        str, typer.Option(help="The api_token the simulator accepts.")
    ] = "aloware-sim-token",  # noqa: S107 - the simulator's well-known test credential
    webhook_url: Annotated[str | None, typer.Option(help="Where Aloware webhooks are sent.")] = None,
    webhook_bearer_token: Annotated[str | None, typer.Option(help="Bearer token of its webhooks.")] = None,
) -> None:
    """Aloware API v1 (base `/api/v1`): Lead API, lookup by phone, power-dialer lists, sequences."""
    from df_middleware.simulators.aloware import create_app as create_aloware

    application = create_aloware(
        api_token=api_token, webhook_url=webhook_url, webhook_bearer_token=webhook_bearer_token
    )
    _serve_simulator(application, host, port)


@simulate_app.command("verity")
def simulate_verity(
    port: Annotated[int, typer.Option(help="Port.")] = 9102,
    host: SimHost = "127.0.0.1",
    api_key: Annotated[str, typer.Option(help="The Bearer key the simulator accepts.")] = "verity-sim-key",
    webhook_url: Annotated[str | None, typer.Option(help="Where texting webhooks are sent.")] = None,
    webhook_secret: Annotated[str | None, typer.Option(help="HMAC secret of texting webhooks.")] = None,
    broadcast_webhook_url: Annotated[str | None, typer.Option(help="Where broadcast webhooks go.")] = None,
    broadcast_webhook_secret: Annotated[str | None, typer.Option(help="HMAC secret of those.")] = None,
) -> None:
    """Verity send-message API; posts signed receipts (sent, then delivered or failed) back."""
    from df_middleware.simulators.verity import create_app as create_verity

    application = create_verity(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        broadcast_webhook_url=broadcast_webhook_url,
        broadcast_webhook_secret=broadcast_webhook_secret,
    )
    _serve_simulator(application, host, port)
