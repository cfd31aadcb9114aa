"""`optout …`: an operator's consent actions (SMS opt-out, voice do-not-call) and the report that
explains a number (R-OPT-2, R-OPT-5, R-OPT-6). Decisions are `manual`, audited in `optout_events`
with the actor, and queued to be told to GHL and the dialer (`queue/operator_events.py`)."""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer

from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import console, fail, print_json
from df_middleware.consent.decisions import Channel, Status

optout_app = typer.Typer(
    help="Opt-outs (SMS) and do-not-call (voice): add, remove, check a number.", no_args_is_help=True
)


def _phone(raw: str) -> str:
    """The number in E.164, checked before the database is opened."""
    from df_middleware.cli.configuration import load_settings
    from df_middleware.consent.manual import e164_or_refuse
    from df_middleware.errors import InvalidPhoneNumber

    try:
        return e164_or_refuse(raw, load_settings().default_phone_region)
    except InvalidPhoneNumber as exc:
        fail(str(exc), code=2)


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _said(outcome: Any, phone: str, done: str) -> None:
    if outcome.decision.applies:
        _line(f"{phone}: {done}")
    else:
        _line(f"{phone}: unchanged ({outcome.decision.why})")


def _line(text: str) -> None:
    """Print a line holding stored text (reasons, actors) as it is: no Rich markup read from it,
    and control characters (terminal escapes) shown escaped, so the audit trail cannot be styled,
    hidden or crash the command."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    console.print(shown, soft_wrap=True, markup=False, highlight=False)


ChannelOption = Annotated[
    str,
    typer.Option(
        "--channel",
        help="sms (texts, the default) or voice (do-not-call)",
        case_sensitive=False,
    ),
]


def _channel(raw: str) -> Channel:
    value = raw.strip().lower()
    if value not in ("sms", "voice"):
        fail(f"--channel must be sms or voice, not {raw!r}", code=2)
    return "voice" if value == "voice" else "sms"


def _decide(
    phone: str, status: Status, channel: str, reason: str, actor: str | None, said: tuple[str, str]
) -> None:
    """Record an operator's decision and queue it to be told (`decide_and_tell`); say what
    happened (`said`: the words for sms, then for voice)."""
    from df_middleware.queue.operator_events import decide_and_tell

    number = _phone(phone)
    which = _channel(channel)
    who = actor or _default_actor()
    outcome = run_on_database(
        lambda db: decide_and_tell(db, number, status, channel=which, reason=reason, actor=who),
        existing_only=True,
    )
    _said(outcome, number, said[0] if which == "sms" else said[1])


@optout_app.command("add")
def optout_add(
    phone: Annotated[str, typer.Argument(help="The number, in any common format")],
    reason: Annotated[str, typer.Option("--reason", help="Why (stored in the history)")],
    actor: Annotated[str | None, typer.Option(help="Who (default: cli:<your user>)")] = None,
    channel: ChannelOption = "sms",
) -> None:
    """Opt a number out (manual source): nothing will be texted to it (sms), or it goes on the
    do-not-call registry (voice). GHL's DND and the dialer lists follow through the worker."""
    added = ("opted out of SMS", "on the do-not-call registry")
    _decide(phone, "opted_out", channel, reason, actor, added)


@optout_app.command("remove")
def optout_remove(
    phone: Annotated[str, typer.Argument(help="The number, in any common format")],
    reason: Annotated[str, typer.Option("--reason", help="Why it may be texted again")] = "manual opt-in",
    actor: Annotated[str | None, typer.Option(help="Who (default: cli:<your user>)")] = None,
    channel: ChannelOption = "sms",
) -> None:
    """Lift a number's opt-out (manual source; only after the person consented again). GHL's DND
    follows through the worker."""
    lifted = ("may be texted again", "off the do-not-call registry")
    _decide(phone, "opted_in", channel, reason, actor, lifted)


@optout_app.command("check")
def optout_check(
    phone: Annotated[str, typer.Argument(help="The number, in any common format")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """A number's SMS and voice status, who decided and why, and its history."""
    from df_middleware.consent.manual import consent_report

    number = _phone(phone)
    report = run_on_database(lambda db: consent_report(db, number), existing_only=True)
    if as_json:
        print_json(report)
        return
    _line(f"{number}: SMS {'allowed' if report['sms_allowed'] else 'OPTED OUT'}")
    for channel in ("sms", "voice"):
        state = report[channel]
        if state is None:
            _line(f"  {channel}: no decision recorded")
        else:
            _line(
                f"  {channel}: {state['status']} by {state['source']} ({state['reason'] or '-'}) "
                f"at {state['last_event_at']}"
            )
    for entry in report["history"]:
        _line(
            f"  {entry['event_at']}  {entry['channel']:5} {entry['status']:9} {entry['source']:8} "
            f"{entry['reason'] or '-'}{'  by ' + entry['actor'] if entry['actor'] else ''}"
        )
