"""``horovodrun -np N python -m training.pretrain ...``."""

from training.pretrain.cli import main

raise SystemExit(main())
