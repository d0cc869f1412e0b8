"""The tiny world (DESIGN C): a seeded shapes world, its ShapeEval detector and the tiny latent teacher.

- :mod:`.shapes`: scene grammar, renderer, held-out evaluation prompts;
- :mod:`.shape_eval`: deterministic detector and per-category scoring;
- :mod:`.autoencoder`: the 8x-down, 16-channel autoencoder (Flux VAE stand-in);
- :mod:`.teacher`: registration, training and loading of the teacher (DiffSynth's stock ``ZImagePipeline``).
"""
