"""An SQLite store on a network filesystem is warned about: its WAL is one machine's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agentic.stores.sqlite import _db, _fs
from agentic.stores.sqlite._db import Database
from agentic.stores.sqlite._fs import network_filesystem


def mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    """Point the module at a mountinfo file of ``lines``."""
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    monkeypatch.setattr(_fs, "MOUNTINFO", str(path))


def mount(point: str, fstype: str, optional: str = "") -> str:
    """One mountinfo line mounting ``fstype`` at ``point``."""
    extra = f" {optional}" if optional else ""
    return f"36 35 98:0 / {point} rw,noatime{extra} - {fstype} server:/export rw"


def test_the_longest_mount_point_holding_the_path_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path is on the filesystem of the deepest mount point holding it, not a parent's."""
    share, local = tmp_path / "share", tmp_path / "share" / "local"
    mountinfo(
        tmp_path,
        monkeypatch,
        mount("/", "ext4"),
        mount(str(share), "nfs4", "shared:7"),
        mount(str(local), "tmpfs"),
    )
    assert network_filesystem(str(share / "agentic.db")) == "nfs4"
    assert network_filesystem(str(local / "agentic.db")) is None
    assert network_filesystem(str(tmp_path / "agentic.db")) is None
    # a sibling whose name merely starts like the mount point is not under it
    assert network_filesystem(str(tmp_path / "shared" / "agentic.db")) is None


def test_escaped_mount_points_and_odd_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount point with a space (\\040 in mountinfo) matches; odd lines are skipped."""
    share = tmp_path / "my share"
    mountinfo(
        tmp_path,
        monkeypatch,
        "garbage",
        mount("/", "ext4"),
        mount(str(share).replace(" ", "\\040"), "cifs"),
    )
    assert network_filesystem(str(share / "agentic.db")) == "cifs"


def test_no_mountinfo_says_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the mount table cannot be read (not Linux), no filesystem is named."""
    monkeypatch.setattr(_fs, "MOUNTINFO", str(tmp_path / "missing"))
    assert network_filesystem(str(tmp_path / "agentic.db")) is None


def test_a_store_on_nfs_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening a store on NFS warns once per file and process, naming the type and Redis."""
    mountinfo(tmp_path, monkeypatch, mount("/", "ext4"), mount(str(tmp_path / "nfs"), "nfs"))
    monkeypatch.setattr(_db, "_WARNED", set())
    path = tmp_path / "nfs" / "agentic.db"
    with caplog.at_level(logging.WARNING, logger="agentic.stores"):
        Database(path).close()
        Database(path).close()
    warned = [r.getMessage() for r in caplog.records if "network filesystem" in r.getMessage()]
    assert len(warned) == 1
    assert "(nfs)" in warned[0] and "redis://" in warned[0] and str(path) in warned[0]


def test_a_store_on_a_local_disk_is_not_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store on a local filesystem opens without the network warning."""
    mountinfo(tmp_path, monkeypatch, mount("/", "ext4"), mount(str(tmp_path / "nfs"), "nfs"))
    monkeypatch.setattr(_db, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="agentic.stores"):
        Database(tmp_path / "agentic.db").close()
    assert not [r for r in caplog.records if "network filesystem" in r.getMessage()]
