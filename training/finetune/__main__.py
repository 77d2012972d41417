"""``python -m training.finetune``."""

from training.finetune.job import main

raise SystemExit(main())
