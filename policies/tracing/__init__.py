"""OpenTelemetry traces: a request span and one span per upstream attempt (``layer``), the tracer
(``tracer``)."""
