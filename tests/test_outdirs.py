"""Stage output directories (maap_trainer.outdirs): published whole, and measured."""

from __future__ import annotations

from pathlib import Path

from maap_trainer.outdirs import directory_size, file_sizes, publish


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_publish_replaces_the_old_directory_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    final = make_tree(tmp_path / "onnx", {"model.onnx": b"old", "stale.txt": b"x"})
    staging = make_tree(tmp_path / "onnx.partial", {"model.onnx": b"new", "sub/a.bin": b"12"})
    publish(staging, final)
    assert file_sizes(final) == {"model.onnx": 3, "sub/a.bin": 2}
    assert (final / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_publish_clears_what_a_crashed_publish_left(tmp_path: Path) -> None:
    # A crash after the first rename leaves the previous copy as `<name>.old` and no `<name>`.
    make_tree(tmp_path / "merged.old", {"config.json": b"{}"})
    publish(
        make_tree(tmp_path / "merged.partial", {"config.json": b'{"a": 1}'}), tmp_path / "merged"
    )
    assert (tmp_path / "merged" / "config.json").read_bytes() == b'{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_directory_size_counts_files_at_every_depth(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", {"a": b"1234", "x/b": b"12", "x/y/c": b"1"})
    (root / "empty").mkdir()
    assert directory_size(root) == 7
    assert file_sizes(root) == {"a": 4, "x/b": 2, "x/y/c": 1}
