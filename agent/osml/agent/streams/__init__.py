"""Live sensor streams for an agent: readings from untrusted lines, time-aligned steps, sources.

* :mod:`~osml.agent.streams.readings` parses and checks one line (pure);
* :mod:`~osml.agent.streams.steps` buckets accepted readings into steps on the Unix epoch and
  cuts complete windows (pure numpy, bounded);
* :mod:`~osml.agent.streams.sources` reads ``mqtt:``, ``tail:``, ``exec:`` and ``stdin`` streams
  in background threads into bounded queues that the agent drains without blocking.
"""

from osml.agent.streams.lines import LineSplitter
from osml.agent.streams.readings import (
    REASONS,
    BadReading,
    Reading,
    ReadingFilter,
    ReadingLimits,
    parse_reading,
)
from osml.agent.streams.sources import (
    ExecSource,
    MqttSource,
    SourceStats,
    StdinSource,
    StreamSource,
    TailSource,
    open_source,
)
from osml.agent.streams.spec import STREAM_KINDS, StreamSpec, is_stream_spec, parse_stream_spec
from osml.agent.streams.steps import AGGREGATES, StepSeries, step_of

__all__ = [
    "AGGREGATES",
    "REASONS",
    "STREAM_KINDS",
    "BadReading",
    "ExecSource",
    "LineSplitter",
    "MqttSource",
    "Reading",
    "ReadingFilter",
    "ReadingLimits",
    "SourceStats",
    "StdinSource",
    "StepSeries",
    "StreamSource",
    "StreamSpec",
    "TailSource",
    "is_stream_spec",
    "open_source",
    "parse_reading",
    "parse_stream_spec",
    "step_of",
]
