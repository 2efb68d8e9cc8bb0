"""The train stage: data, methods (LoRA, QLoRA, DoRA, full), DeepSpeed, checkpoints, resume."""
