"""Bugs the harnesses found in modules this suite does not own, by signature ``ExcType@dir/file.py:function``
(innermost ftedge frame). Random runs skip them so they keep finding new ones; each has a corpus file replayed
under a strict xfail (tests/test_fuzz.py KNOWN_BUGS). Remove entries once their owner fixed the bug.
"""

from __future__ import annotations

KNOWN: dict[str, str] = {
    # Found and fixed in issue 12 (their inputs are regression examples in tests/fuzz/corpus/): manifest shapes
    # (null `files` entry, missing `output`, null `inputs`, `schema_version: [1]`, `roles: 5`, `preprocessing`
    # a list) and train paths with a NUL byte or an over-long name.
}
