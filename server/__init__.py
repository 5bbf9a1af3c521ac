"""The vcounter server: composes signaling, recording and identity behind aiohttp."""
