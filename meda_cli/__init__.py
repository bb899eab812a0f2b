"""meda's command-line interface (Typer)."""
