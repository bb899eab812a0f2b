"""Example third-party plugin: every VM event as a JSON line in ``$MEDA_HOME/events.jsonl``."""

from __future__ import annotations

from meda_core.plugin import Settings, VMEvent, hookimpl


@hookimpl
def meda_vm_event(event: VMEvent) -> None:
    path = Settings().home / "events.jsonl"
    with path.open("a") as log:
        log.write(event.model_dump_json() + "\n")
