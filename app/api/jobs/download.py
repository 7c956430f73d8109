"""Streaming a stored track to a client, with HTTP Range requests, from either backend."""

from __future__ import annotations

from flask import Response, request, send_file

from app.api.errors import ApiError
from app.storage import AudioStorage, LocalStorage

MIMETYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
}


def mimetype(fmt: str | None) -> str:
    return MIMETYPES.get(fmt or "", "application/octet-stream")


def send_audio(storage: AudioStorage, key: str, fmt: str | None) -> Response:
    """The whole file (200) or the one byte range asked for (206); ``FileNotFoundError`` if gone.

    A local file goes through Flask's ``send_file`` (Range, ETag, If-Modified-Since). An S3
    object is streamed from its body chunk by chunk, never held whole in memory; a single
    ``Range`` is passed through to the store. Several ranges in one request are answered with
    the whole file, which HTTP allows.
    """
    if isinstance(storage, LocalStorage):
        path = storage.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return send_file(
            path,
            mimetype=mimetype(fmt),
            download_name=key,
            conditional=True,
            max_age=0,
        )
    size = storage.size(key)
    start, end, status = 0, size - 1, 200
    asked = request.range
    if asked is not None and asked.units == "bytes" and len(asked.ranges) == 1:
        span = asked.range_for_length(size)
        if span is None:
            raise ApiError(
                416,
                f"The requested range is outside the file ({size} bytes).",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{size}"},
            )
        start, end, status = span[0], span[1] - 1, 206
    response = Response(
        storage.stream(key, start, end) if size else iter(()),
        status=status,
        mimetype=mimetype(fmt),
        direct_passthrough=True,
    )
    response.content_length = end - start + 1 if size else 0
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = f"inline; filename={key}"
    response.headers["Cache-Control"] = "no-cache"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
