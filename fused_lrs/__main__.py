"""``python -m fused_lrs``: the fused-lrs command (see cli.py)."""

from fused_lrs.cli import main

raise SystemExit(main())
