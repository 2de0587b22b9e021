"""What travels on ``/v1/ws``: every frame as a typed model, one parser and one encoder, the
``prompt`` payload, and the tool-call envelope. Pure: bytes in, typed messages out, no I/O.
Both the client (:mod:`langchain_fabstir.sessions`) and the reference host
(:mod:`langchain_fabstir.host`) use it, so the two cannot drift apart.

- :mod:`~langchain_fabstir.wire.frames`: the frames of PROTOCOL.md, ``parse_frame``,
  ``encode_frame``, ``prompt_payload``;
- :mod:`~langchain_fabstir.wire.tools`: the JSON envelope of tool calls and structured output.
"""
