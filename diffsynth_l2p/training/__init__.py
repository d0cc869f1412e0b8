"""L2P training on DiffSynth's stack: trainable-set presets, memory dry-run, dataset, training module and loop."""
