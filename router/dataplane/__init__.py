"""The data plane: one client connection, its exchanges, the backend connections, the
routing table and the choice, health, counters (per request; most of it compiled)."""
