"""A multipart/form-data upload read into memory with its size capped while it streams in.

Rule: count the body's bytes as they arrive and stop at the cap, Content-Length or not (a chunked
upload has none), so a 100 MB body is refused after ~cap bytes; and keep every part in memory
(starlette's form parser spools file parts over 1 MB to the temp dir, so the server never uses it).
"""
from typing import AsyncIterator

MULTIPART_OVERHEAD = 65536  # boundaries, part headers and small fields allowed on top of the file


class UploadError(ValueError):
  """A bad upload: status is the HTTP status to answer (400 malformed, 413 too large)."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


async def read_form(stream: AsyncIterator[bytes], content_type: str, max_bytes: int) -> dict[str, bytes]:
  """{field name: bytes} of a multipart/form-data body read from stream (request.stream()), at most
  max_bytes + MULTIPART_OVERHEAD bytes in all: UploadError(413) as soon as the body passes that."""
  import python_multipart  # the `serve` extra, like fastapi: imported when a server runs
  from python_multipart.multipart import parse_options_header
  kind, params = parse_options_header(content_type or "")
  if kind != b"multipart/form-data" or b"boundary" not in params:
    raise UploadError(400, f"expected a multipart/form-data body with the photo as field 'file', got "
                           f"Content-Type {content_type or '(none)'!r}")
  parts, current, header = {}, {}, {"field": b"", "value": b""}
  headers = {}

  def on_part_begin():
    headers.clear()
    current["data"] = bytearray()

  def on_header_field(data, start, end):
    header["field"] += data[start:end]

  def on_header_value(data, start, end):
    header["value"] += data[start:end]

  def on_header_end():
    headers[header["field"].lower()] = header["value"]
    header["field"], header["value"] = b"", b""

  def on_part_data(data, start, end):
    current["data"] += data[start:end]

  def on_part_end():
    _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
    name = disposition.get(b"name", b"").decode("utf-8", "replace")
    parts.setdefault(name, bytes(current["data"]))

  parser = python_multipart.MultipartParser(params[b"boundary"], {
      "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
      "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end})
  limit, received = max_bytes + MULTIPART_OVERHEAD, 0
  try:
    async for chunk in stream:
      received += len(chunk)
      if received > limit:
        raise UploadError(413, f"the upload is over {max_bytes} bytes")
      parser.write(chunk)
    parser.finalize()
  except python_multipart.exceptions.FormParserError as e:
    raise UploadError(400, f"malformed multipart body: {e}") from e
  return parts
