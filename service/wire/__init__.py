"""What crosses between a front end and the accelerator process, and nothing else: the typed
messages (``messages.py``), their frames on the Unix socket (``channel.py``) and the
shared-memory slots that hold the pixels and the rows (``arena.py``). Both processes import
this package; neither imports the other's."""
