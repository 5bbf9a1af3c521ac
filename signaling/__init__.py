"""Session brokering, the customer queue, and the WebRTC media hub.

A leaf package: it knows nothing of the database or of the recorder and
identity packages. The server composes it with them.
"""
