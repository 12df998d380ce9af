"""Images: OME-Zarr (NGFF) writing and reading with multiscale pyramids. Above storage,
below the cache tree."""
