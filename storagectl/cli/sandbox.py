"""storagectl sandbox: build a throwaway legacy Nova compute node (being written)."""

from __future__ import annotations

import click


@click.group("sandbox")
def sandbox_group() -> None:
    """Build a sandbox legacy Nova compute node for demos, tests and benchmarks."""
