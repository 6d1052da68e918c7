"""The accelerator process and the way to it: ``process.py`` owns the pipelines (batchers,
runners, warm-up) and serves every front end; ``client.py`` is what a front end's dataplane
runs items through; ``channel.py`` frames their messages; ``arena.py`` holds the pixels and
rows in shared memory, so only small headers cross the socket."""
