"""``meda events``: the journal of VM and operation events, paged or followed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render, table

if TYPE_CHECKING:
    from meda_core.models import EventPage

app = typer.Typer()


@app.command()
@handles_errors
def events(
    since: int = typer.Option(0, help="Only events after this id (what a page's last id was)"),
    limit: int = typer.Option(100, min=1, max=500, help="Events in one page"),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Then print events as they happen, until Ctrl-C"
    ),
    as_json: bool = JsonOption,
) -> None:
    """Events that happened (created, started, stopped, restarting, expired, …), and why.

    Without --follow: a page of the journal. With it: the events after SINCE (if given),
    then each as it happens, one line each (one JSON object each with --json)."""
    from meda_core.inputs.choices import EventFormat
    from meda_core.models import EventPage

    if not follow:
        page = api().events(since, None, EventFormat.JSON, limit)
        assert isinstance(page, EventPage)
        render(page, as_json, _table)
        return
    feed = api().events(since or None)
    assert not isinstance(feed, EventPage)
    with feed:
        for event in feed:
            line = json.dumps(event) if as_json else _line(event)
            typer.echo(line)


def _table(page: EventPage) -> None:
    rows = [_row(e.id, e.event, e.data) for e in page.events]
    table(("id", "event", "subject", "what", "reason", "message"), rows)


def _line(event: dict[str, Any]) -> str:
    row = _row(event.get("id"), event.get("event", ""), event.get("data", {}))
    return "  ".join(str(field) for field in row if field is not None)


def _row(event_id: int | None, kind: str, data: dict[str, Any]) -> tuple[Any, ...]:
    if kind == "vm":
        return (
            event_id,
            kind,
            data.get("vm"),
            data.get("kind"),
            data.get("reason"),
            data.get("message"),
        )
    return event_id, kind, data.get("id"), data.get("state"), None, data.get("kind")
