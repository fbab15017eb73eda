"""docs/personalize.md's settings table is the one the declarations give (device_agent/policy/spec.py)."""

from __future__ import annotations

from ftedge.device_agent.policy.spec import markdown_table
from tests.helpers.common import ROOT


def test_the_settings_table_in_the_docs_is_current():
    text = (ROOT / "docs" / "personalize.md").read_text()
    shown = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert shown == markdown_table(), "regenerate the table in docs/personalize.md from markdown_table()"
