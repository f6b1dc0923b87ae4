"""``roost bench``: the load generator that backs roost's claims, with peers side by side.

- ``command``: the CLI (``add_parser``, ``run``); ``python -m roost.bench.command``.
- ``runner``: the parent process: forks load generators, steps the phases,
  samples memory.
- ``scenarios``: what one load-generator process does in idle, relay and storm,
  and how loss, duplicates and latency are counted.
- ``loadgen``: the client engine: raw non-blocking sockets on one epoll,
  frames from ``roost.proto.frames``, zero masking key, one flush per turn.
- ``meter``: server RSS/CPU (psutil) and kernel Slab/sockstat.
- ``spawn``: starting roost or a peer (bench/peers/) with a temporary data dir.
- ``report``: the JSON record, the summary table and the plot.
"""
