"""Applications assembled from the engine's parts: the end-to-end demo (``lesionseg demo``)."""
