"""What a run leaves on disk and how runs are laid out in time and space, below the tasks and the trainer:
the run folder's files (run_dir), atomic checkpoints (checkpoint), ranks and devices (distributed), and the
deterministic order of batches (batches)."""
