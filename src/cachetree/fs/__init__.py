"""Storage, the bottom layer: locations on any fsspec filesystem, atomic writes, checked
JSON records and the asynchronous writer. Nothing here knows about nodes or images."""
