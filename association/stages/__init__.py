"""The association pipeline's stages: load, crossmatch, moving, update, store."""
