"""The overview's facts (SPEC §8.2): queue depth by source and status, oldest pending age,
throughput and error rate over the last hour (drawn as an SVG on the server), dead letters, the
last reconcile run per job, OAuth token health and blocked lists.

Every query uses an index, so the page stays fast with a million stored events:
- depth: the events still queued (pending, processing, error, quarantined) per table, source and
  status, index-only through `webhook_events_status_source_idx` and `<table>_status_received_idx`
  (migration 0009); done events are counted only for the last hour;
- the hour: one range of `received_at` per table (`<table>_received_at_idx`), split into twelve
  5-minute buckets counted by status: the events *received* in each bucket and how those ended
  so far. (Counting by `processed_at` would need an index there that the tables do not have.)
- reconcile: the newest row per job (`reconcile_runs_job_name_idx`); tokens: a handful of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy import case, func, select

from df_middleware.admin.dashboard.render import page
from df_middleware.admin.dashboard.session import AdminSession, require_session
from df_middleware.config import Settings
from df_middleware.db.models import GhlOauthToken
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.observability import mask_text
from df_middleware.queue.event_tables import EVENT_TABLES
from df_middleware.sync.list_operations import lists_status
from df_middleware.sync.reconcile_runs import RECONCILE_JOBS, latest_runs

#: The statuses of events still in the queue (or set aside): the overview's depth.
QUEUED_STATUSES = ("pending", "processing", "error", "quarantined")
BUCKET = timedelta(minutes=5)
BUCKETS = 12


@dataclass(frozen=True)
class Bucket:
    """Events received in one 5-minute bucket, by how they ended so far."""

    start: datetime
    done: int
    error: int
    open: int  # pending, processing or quarantined

    @property
    def received(self) -> int:
        return self.done + self.error + self.open

    @property
    def error_rate(self) -> float | None:
        finished = self.done + self.error
        return None if finished == 0 else self.error / finished


@dataclass
class Overview:
    depth: list[dict[str, Any]] = field(default_factory=list)
    oldest_pending_age: dict[str, float | None] = field(default_factory=dict)
    totals_by_status: dict[str, int] = field(default_factory=dict)
    buckets: list[Bucket] = field(default_factory=list)
    dead_letters: int = 0
    reconcile: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    blocked_lists: list[str] = field(default_factory=list)
    chart_svg: str = ""

    @property
    def received_last_hour(self) -> int:
        return sum(b.received for b in self.buckets)

    @property
    def error_rate_last_hour(self) -> float | None:
        done = sum(b.done for b in self.buckets)
        error = sum(b.error for b in self.buckets)
        return None if done + error == 0 else error / (done + error)


async def _queue_depth(db: Database, now: datetime) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """What is still in the queue, by table, source and status (non-zero rows only), and each
    table's oldest pending age. `done` rows are history, not depth: counting them (as
    `queue_stats` does for the metrics) reads every stored event, ~200 ms per million rows,
    while the statuses counted here are few and found through `<table>_status_idx`."""
    rows: list[dict[str, Any]] = []
    oldest: dict[str, float | None] = {}
    async with db.session() as session:
        for event_table in EVENT_TABLES:
            t = event_table.table
            # Only webhook rows have a source column; the others' source is their kind.
            by = [t.c.source] if event_table.kind == "webhook" else []
            counts = await session.execute(
                select(*by, t.c.status, func.count())
                .where(t.c.status.in_(QUEUED_STATUSES))
                .group_by(*by, t.c.status)
            )
            for row in counts:
                status, count = row[-2], row[-1]
                source = row[0] if by else event_table.kind
                rows.append({"table": event_table.name, "source": source, "status": status, "count": count})
            first = await session.scalar(select(func.min(t.c.received_at)).where(t.c.status == "pending"))
            oldest[event_table.name] = None if first is None else max(0.0, (now - first).total_seconds())
    rows.sort(key=lambda r: (r["table"], r["source"] or "", QUEUED_STATUSES.index(r["status"])))
    return rows, oldest


async def _last_hour(db: Database, now: datetime) -> list[Bucket]:
    # Buckets end at the next 5-minute boundary, so the last one is the one in progress.
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=5 - now.minute % 5)
    starts = [end - BUCKET * (BUCKETS - i) for i in range(BUCKETS)]
    counts = [{"done": 0, "error": 0, "open": 0} for _ in starts]
    async with db.session() as session:
        for event_table in EVENT_TABLES:
            t = event_table.table
            # One range read of the hour per table (not one per bucket: 36 → 3 round trips); the
            # bucket is picked by comparisons, which both engines evaluate alike.
            bucket = case(*((t.c.received_at < start + BUCKET, i) for i, start in enumerate(starts)))
            received = (
                select(bucket.label("bucket"), t.c.status)
                .where(t.c.received_at >= starts[0], t.c.received_at < end)
                .subquery()
            )
            rows = await session.execute(
                select(received.c.bucket, received.c.status, func.count()).group_by(
                    received.c.bucket, received.c.status
                )
            )
            for i, status, count in rows:
                key = status if status in ("done", "error") else "open"
                counts[i][key] += count
    return [Bucket(start=s, **c) for s, c in zip(starts, counts, strict=True)]


async def _reconcile_runs(db: Database) -> list[dict[str, Any]]:
    """The newest run of each job (`sync/reconcile_runs.latest_runs`, the API's and the CLI's),
    every job listed: one that never ran says so."""
    latest = await latest_runs(db)
    never = {"status": None, "started_at": None, "finished_at": None, "totals": None, "error_message": None}
    runs = [dict(latest.get(job) or {"job_name": job, **never}) for job in RECONCILE_JOBS]
    for run in runs:  # a remote error can name the contact it was about (R-SEC-4, break13b)
        if isinstance(run.get("error_message"), str):
            run["error_message"] = mask_text(run["error_message"])
    return runs


async def _tokens(db: Database, now: datetime) -> list[dict[str, Any]]:
    """Each installed location's token: fine, expiring within the hour, expired, or refresh failing."""
    async with db.session() as session:
        rows = list(
            await session.scalars(select(GhlOauthToken).order_by(GhlOauthToken.location_id).limit(100))
        )
    tokens = []
    for row in rows:
        if row.refresh_failed_at is not None:
            health = "refresh failing"
        elif row.expires_at <= now:
            health = "expired"
        elif row.expires_at <= now + timedelta(hours=1):
            health = "expiring"
        else:
            health = "ok"
        tokens.append(
            {
                "location_id": row.location_id,
                "expires_at": row.expires_at,
                "health": health,
                "refresh_failed_at": row.refresh_failed_at,
                "refresh_error": mask_text(row.refresh_error) if row.refresh_error else None,
            }
        )
    return tokens


async def read_overview(settings: Settings, db: Database, *, now: datetime | None = None) -> Overview:
    now = now or utcnow()
    overview = Overview()
    overview.depth, overview.oldest_pending_age = await _queue_depth(db, now)
    for row in overview.depth:
        overview.totals_by_status[row["status"]] = (
            overview.totals_by_status.get(row["status"], 0) + row["count"]
        )
    overview.dead_letters = overview.totals_by_status.get("error", 0)
    overview.buckets = await _last_hour(db, now)
    overview.reconcile = await _reconcile_runs(db)
    overview.tokens = await _tokens(db, now)
    overview.blocked_lists = (await lists_status(settings, db)).blocked_lists
    overview.chart_svg = throughput_svg(overview.buckets)
    return overview


# --- the chart ---------------------------------------------------------------------------------------


def _nice_ceiling(value: int) -> int:
    """The axis maximum: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 5:
        return 5
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def throughput_svg(buckets: list[Bucket]) -> str:
    """Stacked bars (done, error, still open) per 5-minute bucket and the error rate as a line on
    a 0 to 100 % right axis. Plain SVG markup built here from numbers only (no text from the database),
    with its colours as attributes, so it needs no script and no inline style (CSP)."""
    width, height = 720, 240
    left, right, top, bottom = 48, 52, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_ceiling(max((b.received for b in buckets), default=0))
    slot = plot_w / max(len(buckets), 1)
    bar_w = slot * 0.62
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart" role="img" '
        'aria-labelledby="chart-title">',
        '<title id="chart-title">Events received per 5 minutes over the last hour, by outcome, '
        "and the error rate</title>",
    ]
    for i in range(5):  # grid lines and the left axis
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{value:g}</text>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{y + 4:.1f}" class="axis rate-axis">{25 * i}%</text>')
    points = []
    for i, bucket in enumerate(buckets):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for amount, css in (
            (bucket.done, "bar-done"),
            (bucket.error, "bar-error"),
            (bucket.open, "bar-open"),
        ):
            if amount:
                h = plot_h * amount / peak
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" class="{css}">'
                    f"<title>{bucket.start:%H:%M}: {amount} {css[4:]}</title></rect>"
                )
        if i % 2 == 0 or i == len(buckets) - 1:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle" class="axis">'
                f"{bucket.start:%H:%M}</text>"
            )
        rate = bucket.error_rate
        if rate is not None:
            points.append((x + bar_w / 2, top + plot_h - plot_h * rate))
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" class="rate-line"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="rate-dot"/>' for x, y in points)
    parts.append(
        f'<text x="{left}" y="{height - 4}" class="axis">UTC, 5-minute buckets</text>'
        f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end" class="axis">'
        "error rate (right axis)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def overview_router() -> APIRouter:
    router = APIRouter()

    @router.get("/admin", include_in_schema=False)
    async def overview_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        facts = await read_overview(request.app.state.settings, request.app.state.db)
        return page(request, "overview.html", session=session, o=facts, chart=Markup(facts.chart_svg))  # noqa: S704 (numbers only)

    return router
