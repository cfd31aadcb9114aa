"""`mappings …`: find a contact's GHL ↔ Aloware mapping, and repair one contact now — the CLI twins
of `GET /api/admin/mappings` and `POST /api/admin/mappings/repair` (same functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import console, fail, print_json

if TYPE_CHECKING:
    from df_middleware.db.session import Database

mappings_app = typer.Typer(help="Contact mappings (GHL ↔ Aloware): search, repair one.", no_args_is_help=True)


@mappings_app.command("search")
def mappings_search(
    phone: Annotated[str | None, typer.Option(help="A phone, in any common format")] = None,
    email: Annotated[str | None, typer.Option(help="An email (any case)")] = None,
    ghl_id: Annotated[str | None, typer.Option("--ghl-id", help="A GHL contact id")] = None,
    aloware_id: Annotated[str | None, typer.Option("--aloware-id", help="An Aloware contact id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    reveal: Annotated[bool, typer.Option("--reveal", help="Show phones and emails unmasked")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Mappings matching every key given, most recently updated first (deleted ones marked)."""
    from df_middleware.admin.records import search_mappings
    from df_middleware.consent.manual import e164_or_refuse
    from df_middleware.errors import InvalidPhoneNumber

    number = None
    if phone is not None:
        try:
            number = e164_or_refuse(phone, load_settings().default_phone_region)
        except InvalidPhoneNumber as exc:
            fail(str(exc), code=2)
    try:
        items = run_on_database(
            lambda db: search_mappings(
                db,
                phone=number,
                email=email,
                ghl_id=ghl_id,
                aloware_id=aloware_id,
                limit=limit,
                reveal=reveal,
            ),
            existing_only=True,
        )
    except ValueError as exc:
        fail(str(exc), code=2)
    if as_json:
        print_json({"items": items})
        return
    table = Table("GHL contact", "Aloware contact", "phone", "email", "last synced", "deleted")
    for item in items:
        table.add_row(
            *(
                Text(str(value or ""))
                for value in (
                    item["ghl_contact_id"],
                    item["aloware_contact_id"],
                    item["phone"],
                    item["email"],
                    (item["last_synced_at"] or "")[:19],
                    (item["deleted_at"] or "")[:19],
                )
            )
        )
    console.print(table)


@mappings_app.command("repair")
def mappings_repair(
    ghl_contact_id: Annotated[str, typer.Argument(help="The GHL contact id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Read the GHL contact afresh and sync it to Aloware now, even when it looks in step."""
    if not ghl_contact_id.replace("-", "").replace("_", "").isalnum() or len(ghl_contact_id) > 200:
        fail(f"not a GHL contact id: {ghl_contact_id!r}", code=2)
    try:
        outcome = run_on_database(lambda db: _repair(db, ghl_contact_id), existing_only=True)
    except LookupError as exc:
        fail(str(exc))
    if as_json:
        print_json(outcome)
    else:
        aloware_id = outcome.get("aloware_contact_id")
        console.print(Text(f"{ghl_contact_id}: {outcome.get('outcome')} (Aloware {aloware_id})"))


async def _repair(db: Database, ghl_contact_id: str) -> dict[str, Any]:
    from df_middleware.connectors.suite import Connectors
    from df_middleware.sync.reconcile import ReconcileNotConfigured, repair_contact

    settings = load_settings()
    connectors = Connectors.from_settings(settings, db)
    try:
        return await repair_contact(settings, db, connectors, ghl_contact_id=ghl_contact_id)
    except ReconcileNotConfigured as exc:
        fail(str(exc), code=2)
    finally:
        await connectors.aclose()
