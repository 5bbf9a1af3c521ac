"""Media tooling for tests and benchmarks, never imported by the server.

* :mod:`~signaling.contrib.headless`: :class:`~signaling.contrib.headless.HeadlessParticipant`,
  a customer or agent that speaks the vcounter protocol without a browser
  (aiortc's own media path, or ``lean=True``: packet-level, as the hub does it).
* :mod:`~signaling.contrib.encoded_source`: clips encoded once
  (:func:`~signaling.contrib.encoded_source.encode_video`,
  :func:`~signaling.contrib.encoded_source.encode_audio`) and played without
  encoding, as an ``av.Packet`` track or as ready-made RTP packets.
* :mod:`~signaling.contrib.fake_media`: the files Chromium's fake camera and
  microphone play (a real face video cropped to a raw y4m clip, a tone as wav).

The core ``signaling`` modules never import this package (``tests/test_import_contract.py``
checks it); these tools use the core like any other client of it.
"""
