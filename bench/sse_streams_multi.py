"""The production layout's live logs: `sse_streams.py --processes 4 --streams 8000` (see there)."""

import sys

import sse_streams

if __name__ == "__main__":
    sys.argv[1:] = ["--processes", "4", "--streams", "8000", *sys.argv[1:]]
    sse_streams.main()
