"""JSON parsers for trace uploads, which are larger than the site-wide request limit allows."""

from tunixops.api.parsers import LimitedJSONParser


class TraceJSONParser(LimitedJSONParser):
    """One trace may be 1 MB."""

    limit_setting = "TUNIX_TRACE_MAX_REQUEST_BYTES"


class TraceBatchJSONParser(LimitedJSONParser):
    """Up to 1,000 traces."""

    limit_setting = "TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES"
