#!/bin/sh
# A spill-train stand-in for the demo job's failure test: rank 0 fails at
# once, every other rank would wait five minutes (as a real rank waits for a
# peer that is gone) unless it is stopped.
if [ "${RANK:-0}" = 0 ]; then
  echo "rank 0 fails on purpose" >&2
  exit 3
fi
exec sleep 300
