"""Staged rollouts of bundles and training campaigns (issue 34): :mod:`.plan` (the rules, pure),
:mod:`.records` (the database), :mod:`.driver` (the collector's thread), :mod:`.cli` (``ftedge fleet rollout``)."""
