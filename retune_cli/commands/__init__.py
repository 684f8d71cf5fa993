"""The CLI's commands, one module each; ``retune_cli.cli`` registers them on the Typer app."""
