"""Usage accounting: stream usage asked for and hidden again (``layer``), estimates and cost (``accounting``,
``pricing``)."""
