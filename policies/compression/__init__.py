"""Prompt compression: fit a chat request into its model's window, deterministically.

``layer`` is the onion layer; ``engine`` orders the steps (``steps``, ``prune``,
``turns``, ``markers``), ``meter`` counts tokens, ``prompt_fit`` computes how big a
prompt may be, ``validate`` checks the config block.
"""
