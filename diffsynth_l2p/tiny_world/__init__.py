"""The tiny world (``docs/tiny-world.md``): L2P end to end at CPU scale.

- :mod:`.shapes`: scene grammar, renderer, held-out split and evaluation prompts;
- :mod:`.shape_eval`: the deterministic detector and per-category scoring (ShapeEval);
- :mod:`.autoencoder`: the 8x-down, 16-channel autoencoder (a Flux VAE stand-in);
- :mod:`.teacher`: the latent teacher that DiffSynth's stock ``ZImagePipeline`` runs;
- :mod:`.student`: the L2P student made with ``synthesize`` -> ``convert`` -> ``train`` -> ``merge``;
- :mod:`.sampling`: batched sampling of both pipelines for evaluation;
- :mod:`.reproduce`: ``l2p tiny-world reproduce``, the whole chain from scratch, and the shipped-asset gates.
"""
