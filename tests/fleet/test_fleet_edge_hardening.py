"""Issue 33 (hardening II), the collector's edges: a guessable share group, slow HTTP clients, malformed query
strings and passwords in database URLs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ftedge.fleet import share_group

from ftedge.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


# -- 9: the share group is a secret ---------------------------------------------------------------------------

def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`ftedge fleet serve` against a closed broker port: it exits at once when it refuses its arguments (before
    the fix it started and retried the broker forever: the timeout fails the test)."""
    cmd = [sys.executable, "-m", "ftedge", "fleet", "serve", "--broker", "mqtt://127.0.0.1:1",
           "--http", "127.0.0.1:0", "--db", str(tmp_path / "fleet.sqlite"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)


@pytest.mark.parametrize("name", ["ftedge-compose", "ftedge-CHANGE-ME-4f9c2e", "ftedge-change-me-5d1b7c90a2e4f1",
                                  "fleet", "bench", "a1b2c3d4e5f6", "aaaaaaaaaaaaaaaaaaaaaaaa",
                                  "abababababababababababab"])
def test_serve_refuses_example_and_guessable_share_groups(tmp_path, name):
    r = _serve(tmp_path, "--share-group", name)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "ftedge fleet share-group" in r.stderr and "collecting from" not in r.stderr


def test_every_share_group_the_docs_and_deploy_files_show_is_refused():
    """A name printed in the repository is public: the collector must refuse each one shipped."""
    shown: set[str] = set()
    files = [*(ROOT / "deploy").rglob("*"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             ROOT / "fleet" / "cli.py"]
    for path in (p for p in files if p.is_file()):
        text = path.read_text(errors="replace")
        shown.update(re.findall(r"FTEDGE_SHARE_GROUP[=:]\s*\$?\{?[A-Z_]*:?-?([A-Za-z0-9._-]+)", text))
        shown.update(re.findall(r"--share-group[ =]([A-Za-z0-9._-]+)", text))
    shown -= {"GROUP", "NAME"}   # placeholders in prose, not names
    assert "ftedge-CHANGE-ME-4f9c2e" in shown   # the env example keeps a placeholder that must be replaced
    for name in shown:
        with pytest.raises(UsageError):
            share_group.check(name)


def test_generated_share_groups_are_accepted_and_differ(tmp_path):
    names = {subprocess.run([sys.executable, "-m", "ftedge", "fleet", "share-group"], capture_output=True,
                            text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(names) == 2
    for name in names:
        assert share_group.check(name) == name


def test_compose_secrets_script_makes_a_share_group_and_keeps_existing_secrets(tmp_path):
    script = ROOT / "deploy" / "compose" / "make-secrets.sh"
    out = tmp_path / "secrets"
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    files = {p.name: p.read_text().strip() for p in out.iterdir()}
    assert set(files) == {"pg_password", "mqtt_password", "fleet_token", "share_group"}
    assert share_group.check(files["share_group"]) == files["share_group"]
    assert all(len(v) >= 32 for v in files.values())
    assert all(out.joinpath(n).stat().st_mode & 0o444 == 0o444 for n in files)   # the collectors' non-root user
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    assert {p.name: p.read_text().strip() for p in out.iterdir()} == files
    compose = (ROOT / "deploy" / "compose" / "compose.yaml").read_text()
    assert "FTEDGE_SHARE_GROUP" not in compose and '--share-group "$$(cat /run/secrets/share_group)"' in compose
