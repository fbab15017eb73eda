"""Signed bundles for the benches that run the device agent (bench/soak, bench/agent_memory, bench/agent_bench):
the agent refuses unsigned ones by default (``[deploy] require_signed = true``), so a bench makes a key pair with
``ftedge keygen``, exports with ``--sign-key`` and lists the public key in the agent config's ``[deploy]
trusted_keys``. Standard library only."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import HOST_PY, ROOT


@dataclass(frozen=True)
class KeyPair:
    """``PREFIX.key.pem`` (signs at export) and ``PREFIX.pub.pem`` (the agent trusts it)."""

    prefix: Path

    @property
    def key(self) -> Path:
        return self.prefix.parent / (self.prefix.name + ".key.pem")

    @property
    def pub(self) -> Path:
        return self.prefix.parent / (self.prefix.name + ".pub.pem")

    def sign_args(self) -> list[str]:
        """The ``ftedge export`` arguments that sign the bundle with this key."""
        return ["--sign-key", str(self.key)]

    def deploy_toml(self) -> list[str]:
        """Agent config lines: a ``[deploy]`` table that trusts this key (and nothing else)."""
        return ["[deploy]", f"trusted_keys = [{json.dumps(str(self.pub))}]"]


def keygen(prefix: Path, cli: Sequence[str] | None = None, env: dict[str, str] | None = None) -> KeyPair:
    """``ftedge keygen -o PREFIX`` (``cli``: the command that runs ftedge; default the host venv's)."""
    cmd = [*(cli or [str(HOST_PY), "-m", "ftedge"]), "keygen", "-o", str(prefix)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"ftedge keygen failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return KeyPair(prefix)
