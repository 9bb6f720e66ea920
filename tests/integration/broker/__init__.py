"""Integration tests of the managed Mosquitto broker and its TLS material."""
