"""Client side of the LipSync service: the `lipsync-client` CLI, the channel factory and the stream API."""
