"""Live sensor streams for an agent: readings from untrusted lines, time-aligned steps, sources.

* :mod:`~osml.agent.streams.readings` parses and checks one line (pure);
* :mod:`~osml.agent.streams.steps` buckets accepted readings into steps on the Unix epoch and
  cuts complete windows (pure numpy, bounded);
* :mod:`~osml.agent.streams.sources` reads ``mqtt:``, ``tail:``, ``exec:`` and ``stdin`` streams
  in background threads into bounded queues that the agent drains without blocking.
"""
