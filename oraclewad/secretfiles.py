"""Files a tenant names for its secrets (evolution.api_key_file, ...): only real, private ones.

A tenant file (or a control-plane request) that could point at any path would let one tenant
read another's credentials into its own child's config. So a named secret must be a regular
file (no symlink, FIFO or device), outside the daemon's state folder (where every tenant's
generated secrets live) unless it is the very file the daemon keeps for that tenant, owned by
the daemon's user or root, and readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path


def secret_file_problem(path: Path, *, state_dir: Path, own: Iterable[Path] = ()) -> str | None:
    """Why `path` may not serve as a secret, with the fix; None when it may."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}; create it (mode 0600) or fix the path"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink: name the file itself"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file: name a file holding only the secret"
    resolved = Path(path).resolve()
    inside_state = resolved.is_relative_to(Path(state_dir).resolve())
    if inside_state and resolved not in {Path(p).resolve() for p in own}:
        return (f"{path} is inside the daemon's state folder {state_dir}, which holds other tenants' "
                "secrets: keep the file elsewhere (e.g. /etc/oraclewa/secrets/)")
    if st.st_uid not in (0, os.geteuid()):
        return (f"{path} belongs to uid {st.st_uid}, not to the daemon's user or root: "
                f"chown it to uid {os.geteuid()}")
    if st.st_mode & 0o077:
        return f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: chmod 600 it (readable by its owner only)"
    return None


def read_secret_file(path: Path, *, state_dir: Path, own: Iterable[Path] = ()) -> str:
    """The secret, stripped; raises ValueError with the problem (for the caller to report)."""
    problem = secret_file_problem(path, state_dir=state_dir, own=own)
    if problem is not None:
        raise ValueError(problem)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):     # swapped since the check
            raise ValueError(f"{path} is not a regular file: name a file holding only the secret")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(64 * 1024).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
