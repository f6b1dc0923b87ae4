"""roost: a messaging server that holds a million WebSocket connections on one machine."""

__version__ = "0.1.0"
