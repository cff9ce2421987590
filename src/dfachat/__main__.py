"""``python -m dfachat``: the same command line as ``dfachat``."""

from dfachat.cli import main

raise SystemExit(main())
