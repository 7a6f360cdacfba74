"""Which filesystem holds an SQLite file: SQLite's WAL cannot be shared across machines.

WAL mode keeps its index in shared memory (the ``-shm`` file, mapped by every process):
processes on two machines reading one file over a network filesystem each see their
own mapping, so one's writes can be missed by the other: the lost update a task
store or a quota must never allow. SQLite says so ("WAL does not work over a network
filesystem"), and its locks over NFS or SMB are only as good as the server's.
Processes on one machine sharing a network mount are safe as far as WAL goes, so
this is a warning, not a refusal (a home directory on NFS is common).

Linux only (``/proc/self/mountinfo``); elsewhere nothing is said.
"""

from __future__ import annotations

import os
import re

__all__ = ["network_filesystem"]

#: Filesystem types whose files other machines may open at the same time.
NETWORK_TYPES = frozenset(
    {
        "9p",  # virtio/WSL shares
        "afs",
        "beegfs",
        "ceph",
        "cifs",
        "fuse.ceph",
        "fuse.gcsfuse",
        "fuse.glusterfs",
        "fuse.juicefs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.sshfs",
        "gfs2",
        "glusterfs",
        "gpfs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "ocfs2",
        "smb3",
        "smbfs",
    }
)

MOUNTINFO = "/proc/self/mountinfo"

# mountinfo escapes space, tab, newline and backslash in paths as \ooo octal
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a mountinfo file."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            # fields: id, parent, major:minor, root, mount point, options,
            # optional fields..., "-", fstype, source, super options
            fstype = fields[fields.index("-", 6) + 1]
        except (ValueError, IndexError):
            continue  # not a line of the format: ignored rather than guessed at
        mounts.append((_unescape(fields[4]), fstype))
    return mounts


def network_filesystem(path: str) -> str | None:
    """The type of the network filesystem holding ``path`` (the longest mount point
    that contains it, through symlinks), or None: a local one, or not known here."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as file:
            text = file.read()
    except OSError:  # not Linux, or /proc not mounted: nothing to say
        return None
    where = os.path.realpath(path)
    best, kind = "", ""
    for point, fstype in _mounts(text):
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        # a later line for the same point is a mount over the earlier one: it wins
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind if kind in NETWORK_TYPES else None
