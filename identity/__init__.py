"""Face verification, liveness and presence monitoring (issue #4)."""
