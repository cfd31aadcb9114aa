"""The OpenAPI document, the offline /docs page, and schemathesis fuzzing from the document
(R-REL-6, R-IN-3, R-SEC-3, SPEC §8.1).

The fuzzing reads `/openapi.json` from the real application and lets schemathesis generate
requests for every operation in it, positive (bodies the schemas allow) and negative (bodies and
headers they do not). The webhook signatures are over the raw bytes, so the test serialises each
generated body itself, signs those bytes with the scheme the operation's `security` names (picked
among its alternatives; the header names come from the document's `securitySchemes`), and sends
exactly them through the whole ASGI application to a real database (both engines). schemathesis
then checks every response against the document: no 5xx, a documented status, content type,
headers and body. The status codes are counted, so the test also proves that the generated cases
got past authentication to the parsers, classifiers and the store (200s and 422s on every webhook
endpoint), and that each `accepted` answer is a stored row.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NotSet
from sqlalchemy import select

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.db.models import BroadcastWebhookEvent, TextingWebhookEvent, WebhookEvent
from tests.conftest import TEST_SECRETS, Keys

ADMIN_SECRET = "admin-secret-fuzz"
METRICS_TOKEN = "metrics-token-fuzz"

#: Webhook path → the table its accepted events go to.
WEBHOOKS: dict[str, Any] = {
    "/api/webhooks/ghl": WebhookEvent,
    "/api/webhooks/ghl/provider-delivery": WebhookEvent,
    "/api/webhooks/aloware": WebhookEvent,
    "/api/webhooks/texting": TextingWebhookEvent,
    "/api/webhooks/broadcast": BroadcastWebhookEvent,
}
#: Generated cases per webhook operation and per other operation (per database), and coverage-phase
#: cases per kind: bounded so the file stays under a minute per database on a loaded 2-core
#: machine. (Run once with 500 examples and the whole coverage phase: no failure either.)
WEBHOOK_EXAMPLES = 50
OTHER_EXAMPLES = 12
COVERAGE_PER_SCENARIO = 8
#: Generous: the fuzzing tests make a few hundred requests each, and CI machines may be loaded.
FUZZ_TIMEOUT = pytest.mark.timeout(360)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _hmac(body: bytes) -> str:
    return hmac.new(TEST_SECRETS["verity_webhook_secret"].encode(), body, hashlib.sha256).hexdigest()


def _basic() -> str:
    user, password = TEST_SECRETS["aloware_webhook_basic_user"], TEST_SECRETS["aloware_webhook_basic_pass"]
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def credentials(scheme: str, body: bytes, keys: Keys) -> str:
    """The value that authenticates `body` under the named security scheme (test secrets/keys)."""
    values: dict[str, Callable[[], str]] = {
        "ghlEd25519Signature": lambda: keys.ed25519_sign(body),
        "ghlRsaSignature": lambda: keys.rsa_sign(body),
        "ghlWorkflowSecret": lambda: TEST_SECRETS["ghl_workflow_webhook_secret"],
        "alowareBasic": _basic,
        "alowareBearer": lambda: "Bearer " + TEST_SECRETS["aloware_webhook_bearer_token"],
        "textingSignature": lambda: _hmac(body),
        "textingPlainSecret": lambda: TEST_SECRETS["verity_webhook_secret"],
        "broadcastSignature": lambda: _hmac(body),
        "adminBearer": lambda: "Bearer " + ADMIN_SECRET,
        "adminSecretHeader": lambda: ADMIN_SECRET,
        "metricsBearer": lambda: "Bearer " + METRICS_TOKEN,
    }
    return values[scheme]()


def scheme_header(scheme: dict[str, Any]) -> str:
    """The header a security scheme of the document travels in."""
    return str(scheme["name"]) if scheme["type"] == "apiKey" else "Authorization"


def serialise(body: Any) -> bytes:
    """The bytes sent for a generated body: JSON as UTF-8 (lone surrogates kept, so the server sees
    invalid UTF-8), or the raw bytes schemathesis generated for a negative case."""
    if body is None or isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@dataclass
class Tally:
    """What the fuzzing saw: status codes per path, and the ids answered `accepted` per table."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    accepted: dict[Any, set[str]] = field(default_factory=dict)

    def record(self, path: str, response: httpx.Response) -> None:
        self.statuses.setdefault(path, Counter())[response.status_code] += 1
        if path in WEBHOOKS and response.status_code == 200:
            data = response.json()
            if data.get("status") == "accepted":
                self.accepted.setdefault(WEBHOOKS[path], set()).add(data["id"])


class Fuzzer:
    """One application, its document as schemathesis reads it, and an event loop to call it on."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings, run_worker=False)
        self.loop = asyncio.new_event_loop()
        # The app's lifespan runs, as under uvicorn: the admin API's operator jobs need the
        # connectors it opens.
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.run(self.lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://fuzz")
        document = self.run(self.client.get("/openapi.json"))
        assert document.status_code == 200
        self.document: dict[str, Any] = document.json()
        self.schema = schemathesis.openapi.from_dict(self.document)

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for path, methods in self.document["paths"].items():
            for method, operation in methods.items():
                yield path, method.upper(), operation

    def cases(self, path: str, method: str) -> st.SearchStrategy[Any]:
        operation = self.schema[path][method]
        return st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

    def coverage_cases(self, path: str, method: str, per_scenario: int) -> list[Any]:
        """schemathesis's coverage phase for the operation (deterministic boundary and invalid
        values: ids one character too long, missing required fields, wrong types, unsupported
        content types and methods…), at most `per_scenario` cases of each kind."""
        operation = self.schema[path][method]
        taken: Counter[tuple[str, str]] = Counter()
        selected = []
        for case in self.schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=self.schema.config.generation_for(operation=operation),
        ):
            meta = case.meta
            assert meta is not None
            kind = (str(meta.generation.mode), str(getattr(meta.phase.data, "scenario", "")))
            if taken[kind] < per_scenario:
                taken[kind] += 1
                selected.append(case)
        return selected

    def send(self, case: Any, scheme_name: str | None, keys: Keys) -> httpx.Response:
        """Send the case's body as bytes, authenticated with `scheme_name` (None: with whatever
        credentials schemathesis generated, i.e. none that are valid); validate the answer."""
        body = serialise(case.body)
        security = self.document["components"]["securitySchemes"]
        operation = self.document["paths"][case.operation.path][case.operation.method.lower()]
        own_headers = {
            scheme_header(security[name]).lower()
            for requirement in operation.get("security", [])
            for name in requirement
        }
        headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
        if scheme_name is not None:
            headers = {k: v for k, v in headers.items() if k.lower() not in own_headers}
            headers[scheme_header(security[scheme_name])] = credentials(scheme_name, body, keys)
        if body:
            headers.setdefault("Content-Type", case.media_type or "application/json")
        response: httpx.Response = self.run(
            self.client.request(
                case.method,
                case.formatted_path,
                params=case.query or None,
                headers=headers,
                content=body or None,
            )
        )
        case.validate_response(response, checks=CHECKS)
        return response

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.lifespan.__aexit__(None, None, None))
        self.run(self.app.state.db.dispose())
        self.loop.close()


@pytest.fixture
def fuzz_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., Settings]:
    """Every webhook secret and key, the admin secret, a metrics token and Marketplace OAuth
    configured, so that every security alternative of the document can be exercised."""

    def factory(**overrides: Any) -> Settings:
        return make_settings(
            auto_migrate=False,
            texting_allow_plain_secret=True,
            df_admin_secret=ADMIN_SECRET,
            metrics_token=METRICS_TOKEN,
            ghl_client_id="client-fuzz",
            ghl_client_secret="client-secret-fuzz",
            token_encryption_key=Fernet.generate_key().decode(),
            data_dir=str(tmp_path),
            **overrides,
        )

    return factory


_HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def explore(strategy: st.SearchStrategy[Any], examples: int, action: Callable[[Any], None]) -> None:
    """Run `action` on `examples` values of `strategy`, deterministically (the seed is derived from
    the test, so a failure reproduces), shrinking a failing one."""

    @settings(_HYPOTHESIS, max_examples=examples)
    @given(drawn=strategy)
    def check(drawn: Any) -> None:
        action(drawn)

    check()


def _send_and_record(
    fuzzer: Fuzzer, tally: Tally, keys: Keys, path: str, drawn: tuple[Any, str | None]
) -> None:
    case, scheme = drawn
    tally.record(path, fuzzer.send(case, scheme, keys))


async def _stored_ids(fuzzer: Fuzzer, model: Any) -> set[str]:
    async with fuzzer.app.state.db.session() as session:
        return {str(i) for i in (await session.scalars(select(model.id))).all()}


@FUZZ_TIMEOUT
def test_signed_cases_from_the_document_never_get_a_5xx(
    fuzz_settings: Callable[..., Settings], keys: Keys
) -> None:
    """R-REL-6, R-IN-3, R-SEC-3, R-IN-2: schemathesis cases for every operation of /openapi.json,
    signed as the operation's `security` says, get documented answers and never a 5xx; every
    webhook endpoint answers some 200s (stored: each `accepted` id is a row) and some 422s, so the
    cases reached the parsers, classifiers and the store. GHL's replay window is off here (random
    timestamps would be refused before classification); `test_ghl_replay_window_...` keeps it on."""
    fuzzer = Fuzzer(fuzz_settings(ghl_webhook_tolerance_seconds=0))
    tally = Tally()
    try:
        for path, method, operation in fuzzer.operations():
            alternatives = [name for requirement in operation.get("security", []) for name in requirement]
            for index, case in enumerate(fuzzer.coverage_cases(path, method, COVERAGE_PER_SCENARIO)):
                scheme = alternatives[index % len(alternatives)] if alternatives else None
                tally.record(path, fuzzer.send(case, scheme, keys))
            schemes = st.sampled_from(alternatives) if alternatives else st.none()
            explore(
                st.tuples(fuzzer.cases(path, method), schemes),
                WEBHOOK_EXAMPLES if path in WEBHOOKS else OTHER_EXAMPLES,
                functools.partial(_send_and_record, fuzzer, tally, keys, path),
            )
        for table, accepted in tally.accepted.items():
            assert accepted <= fuzzer.run(_stored_ids(fuzzer, table)), f"accepted but not stored in {table}"
    finally:
        fuzzer.close()
    for path in WEBHOOKS:
        seen = tally.statuses[path]
        assert seen[200] > 0, (path, seen)
        assert seen[422] > 0, (path, seen)
    assert not [(p, s) for p, seen in tally.statuses.items() for s in seen if s >= 500], tally.statuses


@FUZZ_TIMEOUT
def test_unauthenticated_cases_are_refused_with_401(
    fuzz_settings: Callable[..., Settings], keys: Keys
) -> None:
    """R-REL-6, R-IN-1, R-SEC-1: the same cases without valid credentials (none, or the garbage
    schemathesis generates for the security headers) get 401 on every webhook endpoint, nothing
    is stored, and no operation of the document answers a 5xx."""
    fuzzer = Fuzzer(fuzz_settings())
    tally = Tally()
    try:
        for path, method, operation in fuzzer.operations():
            if not operation.get("security"):
                continue  # open operations are covered by the signed run
            explore(
                st.tuples(fuzzer.cases(path, method), st.none()),
                WEBHOOK_EXAMPLES // 2,
                functools.partial(_send_and_record, fuzzer, tally, keys, path),
            )
        for table in set(WEBHOOKS.values()):
            assert fuzzer.run(_stored_ids(fuzzer, table)) == set()
    finally:
        fuzzer.close()
    for path in WEBHOOKS:
        assert set(tally.statuses[path]) == {401}, (path, tally.statuses[path])
    assert not [(p, s) for p, seen in tally.statuses.items() for s in seen if s >= 500], tally.statuses


@FUZZ_TIMEOUT
def test_ghl_replay_window_refuses_without_a_5xx(fuzz_settings: Callable[..., Settings], keys: Keys) -> None:
    """R-REL-6, R-SEC-3: with the replay window on (300 s), signed GHL cases whose generated
    `timestamp` is far from now are refused (401), never a 5xx; the same body with a timestamp of
    now passes the window and is classified (200 or 422)."""
    fuzzer = Fuzzer(fuzz_settings(ghl_webhook_tolerance_seconds=300))
    tally = Tally()
    now_tally = Tally()

    def both(path: str, case: Any) -> None:
        """As generated (refused), then with a timestamp of now (classified)."""
        tally.record(path, fuzzer.send(case, "ghlEd25519Signature", keys))
        case.body = {**case.body, "timestamp": datetime.now(UTC).isoformat()}
        now_tally.record(path, fuzzer.send(case, "ghlEd25519Signature", keys))

    try:
        for path in ("/api/webhooks/ghl", "/api/webhooks/ghl/provider-delivery"):
            explore(
                fuzzer.cases(path, "POST").filter(
                    lambda case: isinstance(case.body, dict) and "timestamp" in case.body
                ),
                WEBHOOK_EXAMPLES // 3,
                functools.partial(both, path),
            )
    finally:
        fuzzer.close()
    for path in ("/api/webhooks/ghl", "/api/webhooks/ghl/provider-delivery"):
        assert set(tally.statuses[path]) == {401}, tally.statuses[path]
        assert set(now_tally.statuses[path]) <= {200, 422}, now_tally.statuses[path]
        assert now_tally.statuses[path][200] > 0, now_tally.statuses[path]


# --- the document ----------------------------------------------------------------------------------


@pytest.fixture
def offline_app(tmp_path: Path) -> httpx.AsyncClient:
    """The application (no database needed: only the document and /docs are read)."""
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/docs.db")
    app = create_app(settings, run_worker=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs")


async def test_document_describes_every_webhook(offline_app: httpx.AsyncClient) -> None:
    """R-IN-3, R-REL-6, SPEC §8.1: /openapi.json is a valid OpenAPI document in which each webhook
    endpoint has a required JSON request body (a schema naming its required fields), its security
    alternatives (defined schemes), the X-Request-ID header and every answer of the pipeline."""
    response = await offline_app.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate_openapi(document)
    schemes = document["components"]["securitySchemes"]
    expected_security = {
        "/api/webhooks/ghl": {"ghlEd25519Signature", "ghlRsaSignature", "ghlWorkflowSecret"},
        "/api/webhooks/ghl/provider-delivery": {
            "ghlEd25519Signature",
            "ghlRsaSignature",
            "ghlWorkflowSecret",
        },
        "/api/webhooks/aloware": {"alowareBasic", "alowareBearer"},
        "/api/webhooks/texting": {"textingSignature", "textingPlainSecret"},
        "/api/webhooks/broadcast": {"broadcastSignature"},
    }
    for path, security in expected_security.items():
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]
        assert body["required"] is True
        assert set(body["content"]) == {"application/json"}
        assert {name for requirement in operation["security"] for name in requirement} == security
        assert all(len(requirement) == 1 for requirement in operation["security"]), "alternatives, not all"
        assert security <= set(schemes)
        assert {p["name"] for p in operation["parameters"]} == {"X-Request-ID"}
        assert {"200", "400", "401", "408", "413", "415", "422", "429", "431", "503"} <= set(
            operation["responses"]
        )
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        assert "Retry-After" in operation["responses"]["503"]["headers"]
    headers = {scheme_header(s) for s in schemes.values()}
    assert {
        "x-ghl-signature",
        "x-wh-signature",
        "X-DF-Webhook-Secret",
        "Authorization",
        "X-Texting-Signature",
        "X-Texting-Secret",
        "X-Broadcast-Signature",
        "X-DF-ADMIN-SECRET",
    } <= headers
    assert document["paths"]["/leadconnector/oauth/start"]["get"]["security"] == [
        {"adminBearer": []},
        {"adminSecretHeader": []},
    ]
    assert {"metricsBearer": []} in document["paths"]["/metrics"]["get"]["security"]


def _body_validator(document: dict[str, Any], path: str) -> jsonschema.Draft202012Validator:
    reference = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**reference, "components": document["components"]})


async def test_contract_examples_fit_the_documented_bodies(
    offline_app: httpx.AsyncClient, contracts: Path
) -> None:
    """R-IN-3, SPEC §3.1-3.5: every example the senders document (contracts/) is a valid body of
    its endpoint in our document, and an id longer than 256 characters is not."""
    document = (await offline_app.get("/openapi.json")).json()
    examples: list[tuple[str, Any]] = []
    for file in sorted((contracts / "ghl" / "webhooks").glob("*.json")):
        path = (
            "/api/webhooks/ghl/provider-delivery"
            if file.stem == "ProviderOutboundMessage"
            else "/api/webhooks/ghl"
        )
        examples += [(path, example) for example in json.loads(file.read_text())["examples"]]
    examples += [
        ("/api/webhooks/aloware", json.loads(f.read_text()))
        for f in (contracts / "aloware" / "webhooks").glob("*.json")
    ]
    for file in (contracts / "verity" / "webhooks").glob("*.json"):
        path = "/api/webhooks/texting" if file.name.startswith("texting.") else "/api/webhooks/broadcast"
        examples.append((path, json.loads(file.read_text())))
    assert len(examples) > 30
    for path, example in examples:
        errors = [e.message for e in _body_validator(document, path).iter_errors(example)]
        assert not errors, (path, example, errors)
    too_long = {"type": "ContactUpdate", "id": "x" * 257}
    assert not _body_validator(document, "/api/webhooks/ghl").is_valid(too_long)


class _AssetLinks(HTMLParser):
    """Every URL a page makes the browser fetch (scripts, stylesheets, icons, images…)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


async def test_docs_page_needs_nothing_but_this_service(offline_app: httpx.AsyncClient) -> None:
    """SPEC §8.1: /docs is served with its assets from the package: every script, stylesheet and
    icon URL is local and answers 200 with its content type; no other host appears in the page,
    and its Content-Security-Policy allows this origin only. ReDoc (CDN only) is not served."""
    response = await offline_app.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "://" not in page, page
    assert "cdn." not in page, page
    links = _AssetLinks()
    links.feed(page)
    assert len(links.urls) == 3, links.urls
    expected_types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in links.urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        asset = await offline_app.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(expected_types[Path(url).suffix]), (
            url,
            asset.headers,
        )
        assert len(asset.content) > 500, url
    [script] = [url for url in links.urls if url.endswith(".js")]
    assert "SwaggerUIBundle" in (await offline_app.get(script)).text
    assert "url: '/openapi.json'" in page
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy, policy
    assert "http" not in policy, policy
    assert (await offline_app.get("/redoc")).status_code == 404
