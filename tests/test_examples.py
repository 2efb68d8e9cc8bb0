"""Every example manifest is valid: `maap validate` accepts it (a remote data set's rows are
the fetch stage's to check), and `kubectl apply` would (the same models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from maap.cli import app
from typer.testing import CliRunner

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(manifest: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "is valid" in " ".join(result.output.split())
