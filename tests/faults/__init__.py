"""Fault injection: a TCP proxy that cuts, stalls and corrupts (WebSocket-aware) traffic."""
