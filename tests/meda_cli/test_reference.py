"""docs/cli.md is the CLI's own ``--help``, regenerated and compared."""

from __future__ import annotations

from pathlib import Path

from meda_cli.reference import command_paths, render

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_cli_reference_is_current() -> None:
    assert CLI_DOC.read_text() == render(), (
        "docs/cli.md is stale: python -m meda_cli.reference > docs/cli.md"
    )


def test_every_command_is_in_it() -> None:
    text = CLI_DOC.read_text()
    for path in command_paths():
        assert f"## {' '.join(['meda', *path])}\n" in text
