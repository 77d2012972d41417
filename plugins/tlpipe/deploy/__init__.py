"""Fine-tune, gate and deploy on SageMaker: decisions, request builders, operators, the lock, the smoke test."""
