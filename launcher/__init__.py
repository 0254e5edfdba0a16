"""The `trajtune` CLI, config loading and launch-command building. No torch or deepspeed import at module load."""
