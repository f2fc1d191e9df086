"""The workflow's stages: one module per step, each a thin `main()` over library calls."""
