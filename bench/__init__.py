"""The benchmarks. Run each from the repository root as a module: ``.venv/bin/python -m bench.NAME --help``.

Shared helpers live in :mod:`bench._common`; test helpers are imported from :mod:`tests.helpers`."""
