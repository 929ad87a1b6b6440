"""The learning core: pure numpy, no network, no torch.

Similarity and alignment figures, the osmosis operator, sub-context memory, neighbour screening,
the equilibrium test, the per-agent learner, the context anchor, neighbour topologies and the
downstream probes of the report.
"""
