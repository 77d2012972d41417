"""``python -m training.serve``."""

from training.serve.cli import main

raise SystemExit(main())
