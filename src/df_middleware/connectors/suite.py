"""All external clients of one process, built from settings, opened once and closed once.

The worker builds a `Connectors` at start and hands it to every handler through
`HandlerContext`; `df-middleware check` builds one to report on each system. A system whose
settings are missing has no client (None), and its check says which settings to set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from df_middleware.config import Settings
from df_middleware.connectors.aloware import AlowareClient
from df_middleware.connectors.ghl import GhlClient, build_ghl_http
from df_middleware.connectors.http import ServiceClient
from df_middleware.connectors.status import ConnectionReport
from df_middleware.connectors.tokens import GhlCredentials, GhlTokenStore, load_token_cipher
from df_middleware.connectors.verity import VerityClient
from df_middleware.connectors.verity_db import BroadcastAnalyticsReader
from df_middleware.db.session import Database


@dataclass
class Connectors:
    """The clients a handler may use. `ghl` is bound to GHL_LOCATION_ID; `ghl_for(id)` serves any
    location we hold credentials for (OAuth installations)."""

    settings: Settings
    ghl_http: ServiceClient
    tokens: GhlTokenStore
    credentials: GhlCredentials
    aloware: AlowareClient | None = None
    verity: VerityClient | None = None
    analytics: BroadcastAnalyticsReader | None = None
    _ghl_clients: dict[str, GhlClient] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> Connectors:
        ghl_http = build_ghl_http(settings)
        tokens = GhlTokenStore(settings, db, ghl_http, load_token_cipher(settings))
        return cls(
            settings=settings,
            ghl_http=ghl_http,
            tokens=tokens,
            credentials=GhlCredentials(settings, tokens),
            aloware=AlowareClient.from_settings(settings),
            verity=VerityClient.from_settings(settings),
            analytics=BroadcastAnalyticsReader.from_settings(settings),
        )

    @property
    def ghl(self) -> GhlClient | None:
        """The client of GHL_LOCATION_ID, or None when no location is configured."""
        location = self.settings.ghl_location_id
        return self.ghl_for(location) if location else None

    def ghl_for(self, location_id: str) -> GhlClient:
        client = self._ghl_clients.get(location_id)
        if client is None:
            client = GhlClient(
                self.ghl_http,
                self.credentials,
                location_id,
                phone_region=self.settings.default_phone_region,
            )
            self._ghl_clients[location_id] = client
        return client

    async def aclose(self) -> None:
        await self.tokens.wait_for_refreshes()  # a rotated refresh token must reach the database
        await self.ghl_http.aclose()
        if self.aloware is not None:
            await self.aloware.aclose()
        if self.verity is not None:
            await self.verity.aclose()
        if self.analytics is not None:
            await self.analytics.dispose()

    async def check(self) -> list[ConnectionReport]:
        """One report per system (and per OAuth installation); never raises."""
        reports: list[ConnectionReport] = []
        ghl = self.ghl
        if ghl is None:
            reports.append(
                ConnectionReport.not_configured("ghl", "GHL_LOCATION_ID and GHL_API_KEY (or OAuth)")
            )
        else:
            reports.append(await ghl.check())
        reports.extend(await self.tokens.check())
        if self.aloware is None:
            reports.append(ConnectionReport.not_configured("aloware", "ALOWARE_API_TOKEN"))
        else:
            reports.append(await self.aloware.check())
        if self.verity is None:
            reports.append(ConnectionReport.not_configured("verity", "VERITY_BASE_URL and VERITY_API_KEY"))
        else:
            reports.append(await self.verity.check())
        if self.analytics is None:
            reports.append(ConnectionReport.not_configured("verity-db", "VERITY_DATABASE_URL"))
        else:
            reports.append(await self.analytics.check())
        return reports
