"""Operations: the simulator, a local fleet of agent processes, fleet files and broker set-up,
the live monitor and run reports."""
