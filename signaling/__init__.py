"""Session brokering, the customer queue, and the WebRTC media hub.

A leaf package: it knows nothing of the database or of the recorder and
identity packages. The server composes it with them.

How media reaches its consumers
-------------------------------

Between the two participants of a call the hub forwards RTP packets
(:mod:`signaling.rtp_forward`): nothing is reassembled, decoded or encoded on
that path. Everything else that wants media takes it from the call's
:class:`~signaling.track_tap.TrackTap` of one participant and kind,
``hub.call(call_id).tap(role, kind)``, in one of two forms:

* **Decoded frames: aiortc's contract.**
  :meth:`~signaling.track_tap.TrackTap.subscribe_decoded` returns a
  subscription read exactly like a ``MediaStreamTrack``: ``await recv()``
  yields ``av.VideoFrame``/``av.AudioFrame``, and raises aiortc's
  ``MediaStreamError`` once the subscription is closed (``close()``) or the
  tap closes with the call. A decoder runs only while a subscription is open.
  Identity checks (``server/identity_service.py``) read video this way.
* **Encoded frames: the recorder's path.**
  :meth:`~signaling.track_tap.TrackTap.add_sink` calls ``sink(frame)``
  synchronously on the event loop with every :class:`~signaling.frames.EncodedFrame`
  (the sender's encoded bytes, codec-clock timestamp, keyframe flag, arrival
  time), reassembled from the forwarded packets while at least one consumer
  exists. It returns a remover; calling it ends the path, and a closing tap
  drops its sinks. :attr:`~signaling.track_tap.TrackTap.generation` changes when
  the sender reconnects: the next frame starts a new stream. The recorder
  (``server/recording.py``) is fed this way, so recording costs no queue and
  no task switch per frame.

(In ``media_mode="transcode"``, a comparison for benchmarks, the taps carry nothing.)

:mod:`signaling.passthrough` is the only module that reaches into aiortc's
internals. Headless participants and pre-encoded sources for tests and
benchmarks live in :mod:`signaling.contrib`, which the modules here never import.
"""
