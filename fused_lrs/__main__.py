"""``python -m fused_lrs``: the fused-lrs command (see cli.py)."""

from fused_lrs.cli import main

if __name__ == "__main__":      # (a tool that imports every module must not run the command)
    raise SystemExit(main())
