"""The SFT loop on the DeepSpeed engine (or its plain-PyTorch twin), model loading, checkpoints, export, metrics."""
