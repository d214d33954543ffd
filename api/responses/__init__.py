"""The Responses API surface (`/v1/responses`): stored, chained, streamed and background responses."""
