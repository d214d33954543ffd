"""The Responses API surface (`/v1/responses`, over HTTP and WebSocket): stored, chained, streamed and background
responses, and the conversations they are kept in (`/v1/conversations`)."""
