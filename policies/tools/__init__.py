"""Tool routes (``/tools/{name}/...``): their handler and chain (``routes``), path safety (``paths``), read
cache (``cache_layer``)."""
