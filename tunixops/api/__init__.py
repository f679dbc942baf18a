"""Web plumbing shared by every API: errors, parsers, serializers, pagination, flow control."""
