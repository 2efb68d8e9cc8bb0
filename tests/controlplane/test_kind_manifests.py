"""What tests/kind/e2e.sh applies, validated by the real API server (server-side dry run):
the artifacts claim, the data-loader pod and the example FineTuneJob on that claim."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.test_kind import KIND_DIR, kustomized


def test_kind_manifests_pass_server_side_dry_run(control_plane, namespace, tmp_path: Path) -> None:
    volume = (KIND_DIR / "data-volume.yaml").read_text()
    manifest = tmp_path / "kind.yaml"
    manifest.write_text(
        volume.replace("MAAP_TRAINER_IMAGE", "maap-trainer:e2e")
        + "---\n"
        + yaml.safe_dump(kustomized())
    )
    done = control_plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(manifest),
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    created = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == 3, done.stdout
